# Helpers of the workflow. They validate the config, build the study plan (runs
# keyed by content hash) and provide the input functions. All of it runs when
# Snakemake parses the workflow, before any job starts.

import json
import os
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

# The plan is computed from this checkout's src/, the code that the cache keys
# hash; jobs import the same code through workflow/scripts/backmatch_job.py.
SOURCE_DIR = Path(workflow.basedir) / "src"
sys.path.insert(0, str(SOURCE_DIR))

import yaml

from backmatch.plan import OUTPUTS, PlanError, build_plan, config_problems

CONFIG_FILES = [os.path.normpath(path) for path in workflow.config_settings.configfiles] or ["config/config.yaml"]
with open(workflow.source_path("../schemas/config.schema.yaml")) as schema_file:
    _problems = config_problems(config, yaml.safe_load(schema_file))
if _problems:
    raise WorkflowError(
        f"Invalid config ({', '.join(CONFIG_FILES)}); fix these keys before any job starts:\n  "
        + "\n  ".join(_problems)
    )
validate(config, schema="../schemas/config.schema.yaml")
try:
    PLAN = build_plan(config, SOURCE_DIR)
except PlanError as error:
    raise WorkflowError(f"Invalid config ({', '.join(CONFIG_FILES)}): {error}") from None

DATA_DIR = config["data_dir"]
DEVICE = config["device"]
GPUS_PER_JOB = 1 if DEVICE == "cuda" else 0
FIGURE_IDS = [key for key, spec in OUTPUTS.items() if spec["kind"] == "figure"]
TABLE_IDS = [key for key, spec in OUTPUTS.items() if spec["kind"] == "table"]
NOTEBOOK_HELPERS = sorted(str(path) for path in (SOURCE_DIR / "backmatch" / "reporting").glob("*.py"))


def data_record(dataset):
    """Return the verification record of a dataset, marked ancient so re-unpacking the data reruns nothing."""
    return ancient(f"results/data/{dataset}.json")


def canonical_json(data):
    """Return ``data`` as JSON with sorted keys.

    Rule parameters are passed as such strings because Snakemake compares
    parameters by their text to decide reruns, and two configs can hold the
    same values in another key order.
    """
    return json.dumps(data, sort_keys=True)


def run_settings(wildcards):
    """Return the training settings of a run as JSON for ``backmatch train --settings-json``."""
    return canonical_json(PLAN.runs[wildcards.run].settings)


def run_dataset(wildcards):
    return data_record(PLAN.runs[wildcards.run].settings["dataset"])


def output_inputs(wildcards):
    """Return the notebook, the plotting helpers and the data files of a figure or table."""
    return {
        "notebook": f"notebooks/{wildcards.output_id}.py",
        "helpers": NOTEBOOK_HELPERS,
        "data": PLAN.output_inputs(wildcards.output_id),
    }


def output_parameters(wildcards):
    return canonical_json(PLAN.output_parameters(wildcards.output_id))


def all_runs():
    return [PLAN.run_outputs(run_id)["summary"] for run_id in sorted(PLAN.runs)]


def main_output(output_id):
    """Return the file that stands for a figure (its PDF) or a table (its CSV)."""
    if OUTPUTS[output_id]["kind"] == "figure":
        return f"results/figures/{output_id}.pdf"
    return f"results/tables/{output_id}.csv"


def report_inputs(wildcards):
    """Return the template, every figure, table and verdict, run summaries and job benchmarks."""
    datasets = sorted({run.settings["dataset"] for run in PLAN.runs.values()} | {"cifar10"})
    benchmarks = [f"results/benchmarks/prepare_data/{dataset}.tsv" for dataset in datasets]
    benchmarks += [f"results/benchmarks/train/{run_id}.tsv" for run_id in sorted(PLAN.runs)]
    for member in PLAN.members:
        benchmarks += [
            f"results/benchmarks/hessian/{member.run_id}/{PLAN.hessian_key}/epoch_{epoch:03d}.tsv"
            for epoch in member.hessian_epochs
        ]
    benchmarks += [f"results/benchmarks/backmatching/{PLAN.backmatching_key}/seed_{seed}.tsv" for seed in PLAN.seeds]
    benchmarks += [f"results/benchmarks/notebooks/{output_id}.tsv" for output_id in OUTPUTS]
    return {
        "template": "workflow/report/report.typ",
        "figures": [f"results/figures/{output_id}.png" for output_id in FIGURE_IDS],
        "tables": [f"results/tables/{output_id}.csv" for output_id in OUTPUTS],
        "verdicts": [f"results/verdicts/{output_id}.json" for output_id in OUTPUTS],
        "summaries": all_runs(),
        "benchmarks": sorted(set(benchmarks)),
    }
