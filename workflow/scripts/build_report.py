"""Collect verdicts, figures, tables and provenance into results/report.json and compile the PDF."""

import csv
import datetime
import json
import logging
import math
import subprocess
from collections import defaultdict
from pathlib import Path

import typst

# The snakemake object is injected by Snakemake's script directive.
snakemake = globals()["snakemake"]
logging.basicConfig(filename=snakemake.log[0], level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
logger = logging.getLogger("report")

#: Report sections in reading order: title, the claim under test, and its outputs.
SECTIONS = [
    ("Back-matching propagation and back-propagation",
     "One back-matching pass whose every argmin is replaced by one gradient step of size 1 reproduces one "
     "step of back-propagation; steps of size 1/m give SGD with per-block rates eta / (m_W prod m_z).", ["T1"]),
    ("Orthonormal initialisation",
     "Orthonormal weights give local Hessians H_z with condition number 1 (non-zero spectrum exactly 1 with "
     "ReLU); Gaussian weights spread the spectrum.", ["F1"]),
    ("Skip connections",
     "If the residual branch has ||J_G|| <= e < 1, the condition number of H_z is at most ((1+e)/(1-e))^2.", ["F2"]),
    ("Batch normalisation",
     "Batch normalisation improves the conditioning of the local Hessians, makes w an exact null direction "
     "and scales H_W as 1/||w||^2, so the effective learning rate drifts as the weight norm grows.", ["F3", "F6"]),
    ("Closed-form curvature",
     "The scalar curvatures m used by scale-amended SGD approximate trace/dim of the exact local Hessians.", ["T3"]),
    ("Scale-amended SGD",
     "Scale-amended SGD, which sets per-block rates from the local curvatures, trains VGG13 with batch "
     "normalisation at least as well as SGD.", ["F4", "F5", "T2"]),
]


def format_cell(value: str) -> str:
    """Round long decimals for display: 4 significant digits."""
    try:
        number = float(value)
    except ValueError:
        return value
    if math.isnan(number):
        return "n/a"
    if number.is_integer() and abs(number) < 1e6 and "." not in value and "e" not in value.lower():
        return value
    if number != 0 and not 1e-3 <= abs(number) < 1e5:
        return f"{number:.3e}"
    return f"{number:.4g}"


def read_table(path: str) -> dict:
    """Return every row of a CSV table, numbers rounded for display; long tables continue on the next page."""
    with open(path, newline="") as handle:
        rows = list(csv.reader(handle))
    header, body = rows[0], rows[1:]
    return {"columns": header, "rows": [[format_cell(cell) for cell in row] for row in body]}


def wall_times(paths: list[str]) -> dict:
    """Sum the seconds of every job's Snakemake benchmark file, per rule."""
    seconds = defaultdict(float)
    jobs = defaultdict(int)
    for path in paths:
        rule = Path(path).relative_to("results/benchmarks").parts[0].removesuffix(".tsv")
        with open(path, newline="") as handle:
            rows = list(csv.DictReader(handle, delimiter="\t"))
        seconds[rule] += sum(float(row["s"]) for row in rows)
        jobs[rule] += 1
    rows = [[rule, str(jobs[rule]), f"{seconds[rule]:.1f}", f"{seconds[rule] / jobs[rule]:.1f}"] for rule in sorted(seconds)]
    total = sum(seconds.values())
    rows.append(["all", str(sum(jobs.values())), f"{total:.1f}", ""])
    return {"columns": ["rule", "jobs", "total s", "mean s per job"], "rows": rows}


def git(*arguments: str) -> str:
    try:
        return subprocess.run(["git", *arguments], capture_output=True, text=True, check=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def provenance(summary_paths: list[str]) -> dict:
    first = json.loads(Path(summary_paths[0]).read_text())["provenance"]
    devices = sorted({json.loads(Path(path).read_text())["provenance"]["host"]["device_name"] for path in summary_paths})
    versions = ", ".join(f"{name} {version}" for name, version in first["versions"].items() if version)
    return {
        "commit": git("rev-parse", "HEAD"),
        "dirty": "yes" if git("status", "--porcelain", "--untracked-files=no") else "no",
        "device": "; ".join(devices),
        "host": f"{first['host']['platform']}, {first['host']['cpu_count']} CPUs",
        "versions": versions,
        "config": snakemake.params.scale,
    }


inputs = snakemake.input
verdicts = {Path(path).stem: json.loads(Path(path).read_text()) for path in inputs.verdicts}
figures = {Path(path).stem: path for path in inputs.figures}
tables = {Path(path).stem: path for path in inputs.tables}

outputs = {}
for output_id in snakemake.params.outputs:
    verdict = verdicts[output_id]
    kind = "figure" if output_id in figures else "table"
    outputs[output_id] = {
        "id": output_id,
        "kind": kind,
        "claim": verdict["claim"],
        "verdict": verdict["verdict"],
        "sentence": verdict["sentence"],
        "caption": verdict.get("caption", output_id),
        "scale": verdict["scale"],
        "image": "/" + figures[output_id] if kind == "figure" else None,
        "table": read_table(tables[output_id]) if kind == "table" else None,
    }

sections = [
    {"title": title, "claim": claim, "outputs": [outputs[output_id] for output_id in ids if output_id in outputs]}
    for title, claim, ids in SECTIONS
]
data = {
    "created": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    "scale_note": (
        f"Configuration '{snakemake.params.scale}'. Every figure states the width, epochs, training images and "
        "seeds behind it; results below paper scale test the method and the pipeline, not the published numbers."
    ),
    "outputs": [outputs[output_id] for output_id in snakemake.params.outputs],
    "sections": sections,
    "provenance": provenance(list(inputs.summaries)),
    "wall_time": wall_times(list(inputs.benchmarks)),
}
Path(snakemake.output.data).write_text(json.dumps(data, indent=2))
typst.compile(
    inputs.template,
    output=snakemake.output.pdf,
    root=".",
    sys_inputs={"data": "/" + snakemake.output.data},
)
logger.info("wrote %s", snakemake.output.pdf)
