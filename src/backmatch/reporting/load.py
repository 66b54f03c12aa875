"""Reading run folders, Hessian records and back-matching records into tidy tables.

Every loader takes the ``runs`` list that the workflow passes to a notebook: one
dict per (experiment, variant, dataset, seed) with ``run_dir`` and, where the
figure needs them, the Hessian record per epoch.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

CELL_COLUMNS = ["experiment", "variant", "dataset", "seed"]


def _cell(run: dict[str, Any]) -> dict[str, Any]:
    return {key: run[key] for key in CELL_COLUMNS}


def load_summaries(runs: list[dict[str, Any]]) -> pd.DataFrame:
    """Return one row per run with its status and accuracies."""
    rows = []
    for run in runs:
        summary = json.loads((Path(run["run_dir"]) / "summary.json").read_text())
        rows.append({
            **_cell(run),
            "status": summary["status"],
            "final_test_acc": summary["final_test_acc"],
            "best_test_acc": summary["best_test_acc"],
            "epochs_completed": summary["epochs_completed"],
            "train_seconds": summary["train_seconds"],
            "images_per_second": summary["images_per_second"],
        })
    return pd.DataFrame(rows)


def _load_run_tables(runs: list[dict[str, Any]], name: str) -> pd.DataFrame:
    frames = [pd.read_csv(Path(run["run_dir"]) / name).assign(**_cell(run)) for run in runs]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def load_metrics(runs: list[dict[str, Any]]) -> pd.DataFrame:
    """Return metrics.csv of every run, one row per run and epoch."""
    return _load_run_tables(runs, "metrics.csv")


def load_blocks(runs: list[dict[str, Any]]) -> pd.DataFrame:
    """Return blocks.csv of every run, one row per run, epoch and block."""
    return _load_run_tables(runs, "blocks.csv")


def load_hessian(runs: list[dict[str, Any]]) -> pd.DataFrame:
    """Return one row per run, epoch, block and matrix (``H_W`` or ``H_z``).

    Columns: the cell columns, ``epoch``, ``status``, ``block``, ``index``,
    ``kind``, ``matrix``, ``weight_norm``, ``jg_norm``, ``m_closed`` (the
    closed-form curvature of that matrix) and every field of the matrix record
    (``condition_number``, ``lambda_max``, ``mean_eigenvalue``, ``method``, ...).
    Records of diverged runs give one row with ``status == "diverged"`` and no block.
    """
    rows = []
    for run in runs:
        for epoch, path in sorted(run["hessian"].items(), key=lambda item: int(item[0])):
            record = json.loads(Path(path).read_text())
            status = record.get("status", "completed")
            if not record.get("blocks"):
                rows.append({**_cell(run), "epoch": int(epoch), "status": status})
                continue
            for block in record["blocks"]:
                for matrix, closed_key in (("H_W", "m_w"), ("H_z", "m_z")):
                    rows.append({
                        **_cell(run),
                        "epoch": int(epoch),
                        "status": status,
                        "block": block["block"],
                        "index": block["index"],
                        "kind": block["kind"],
                        "bn": block.get("bn"),
                        "matrix": matrix,
                        "weight_norm": block.get("weight_norm"),
                        "jg_norm": block.get("jg_norm"),
                        "m_closed": (block.get("closed_form") or {}).get(closed_key),
                        **block[matrix],
                    })
    return pd.DataFrame(rows)


def load_backmatching(paths: list[str]) -> pd.DataFrame:
    """Return the records of every back-matching file, with the seed of each file."""
    frames = []
    for path in paths:
        record = json.loads(Path(path).read_text())
        seed = record.get("settings", {}).get("seed")
        frames.append(pd.DataFrame(record["records"]).assign(seed=seed))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
