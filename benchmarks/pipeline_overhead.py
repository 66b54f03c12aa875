"""Overhead of the workflow itself: planning the paper-scale DAG, and notebook jobs outside their cells.

Usage, after a workflow run has produced results/notebooks and results/benchmarks:

    python benchmarks/pipeline_overhead.py --out benchmarks/results/pipeline.json

1. ``snakemake -n --configfile config/paper.yaml``: the time Snakemake needs to
   parse the workflow, validate the config, hash the code and build the DAG
   (best of three runs).
2. For every executed notebook, the wall time of its Snakemake job (from
   ``results/benchmarks/notebooks/<id>.tsv``) minus the time its cells took
   (papermill's per-cell durations): kernel start, notebook conversion and
   everything else around the notebook's own work.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import time
from pathlib import Path

import nbformat


def dry_run_seconds(configfile: str, repeats: int = 3) -> list[float]:
    """Return the wall time of ``repeats`` dry runs of the workflow with ``configfile``."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "snakemake", "--dry-run", "--quiet", "rules", "--configfile", configfile],
            check=True, capture_output=True,
        )
        times.append(time.perf_counter() - start)
    return times


def notebook_overheads(results: Path) -> dict[str, dict[str, float]]:
    """Return, per executed notebook, job seconds, cell seconds and their difference."""
    overheads = {}
    for notebook_path in sorted((results / "notebooks").glob("*.ipynb")):
        output_id = notebook_path.stem
        benchmark = results / "benchmarks" / "notebooks" / f"{output_id}.tsv"
        if not benchmark.is_file():
            continue
        with benchmark.open(newline="") as handle:
            job_seconds = float(next(csv.DictReader(handle, delimiter="\t"))["s"])
        notebook = nbformat.read(notebook_path, as_version=4)
        cell_seconds = sum(cell.metadata.get("papermill", {}).get("duration") or 0.0 for cell in notebook.cells)
        overheads[output_id] = {"job_seconds": job_seconds, "cell_seconds": cell_seconds, "overhead_seconds": job_seconds - cell_seconds}
    return overheads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=Path("results"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/pipeline.json"))
    args = parser.parse_args()

    dry_runs = dry_run_seconds("config/paper.yaml")
    overheads = notebook_overheads(args.results)
    result = {
        "dry_run_paper_seconds": dry_runs,
        "dry_run_paper_best_seconds": min(dry_runs),
        "notebooks": overheads,
        "notebook_overhead_max_seconds": max((entry["overhead_seconds"] for entry in overheads.values()), default=None),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps({key: value for key, value in result.items() if key != "notebooks"}, indent=2))
    for output_id, entry in overheads.items():
        print(f"{output_id}: job {entry['job_seconds']:.1f} s, cells {entry['cell_seconds']:.1f} s, overhead {entry['overhead_seconds']:.1f} s")


if __name__ == "__main__":
    main()
