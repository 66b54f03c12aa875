# Figures and tables: each jupytext notebook in notebooks/ runs under papermill
# with the runs it reads as parameters.


rule figure:
    input:
        unpack(output_inputs),
    output:
        pdf="results/figures/{output_id}.pdf",
        png="results/figures/{output_id}.png",
        table="results/tables/{output_id}.csv",
        verdict="results/verdicts/{output_id}.json",
        notebook="results/notebooks/{output_id}.ipynb",
    wildcard_constraints:
        output_id="F[0-9]+",
    log:
        "logs/notebooks/{output_id}.log",
    benchmark:
        "results/benchmarks/notebooks/{output_id}.tsv"
    params:
        parameters=output_parameters,
    threads: config["threads"]["notebook"]
    resources:
        gpu=0,
    conda:
        "../envs/notebooks.yaml"
    script:
        "../scripts/run_notebook.py"


rule table:
    input:
        unpack(output_inputs),
    output:
        table="results/tables/{output_id}.csv",
        verdict="results/verdicts/{output_id}.json",
        notebook="results/notebooks/{output_id}.ipynb",
    wildcard_constraints:
        output_id="T[0-9]+",
    log:
        "logs/notebooks/{output_id}.log",
    benchmark:
        "results/benchmarks/notebooks/{output_id}.tsv"
    params:
        parameters=output_parameters,
    threads: config["threads"]["notebook"]
    resources:
        gpu=0,
    conda:
        "../envs/notebooks.yaml"
    script:
        "../scripts/run_notebook.py"


# One named target per figure and table: `snakemake F4` builds F4 and what it needs.
for output_id in FIGURE_IDS + TABLE_IDS:

    rule:
        name:
            output_id
        input:
            main_output(output_id),
