# backmatch: regenerate every figure and table of the local-Hessian study and
# compile results/report.pdf.
#
#   snakemake --cores all                    # default laptop-scale config
#   snakemake --cores all --configfile config/paper.yaml
#   snakemake results/figures/F4.pdf         # one figure and what it needs
#
# profiles/default sets the usual options (rerun incomplete jobs, show failed
# logs); profiles/slurm runs the same DAG on a SLURM cluster.

from snakemake.utils import min_version

min_version("9.0")


# The default config applies only when no --configfile is given, because
# Snakemake would otherwise merge the two and keep variants of both.
if not workflow.config_settings.configfiles:

    configfile: "config/config.yaml"


include: "workflow/rules/common.smk"


wildcard_constraints:
    dataset="cifar10|cifar100",
    run="[A-Za-z0-9_.-]+-[0-9a-f]{12}",
    hessian_key="h[0-9a-f]{12}",
    backmatching_key="b[0-9a-f]{12}",
    epoch="[0-9]{3}",
    seed="[0-9]+",
    output_id="[FT][0-9]+",


include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/analysis.smk"
include: "workflow/rules/figures.smk"
include: "workflow/rules/report.smk"


rule all:
    default_target: True
    input:
        "results/report.pdf",
