"""Writing a figure, its data table and its verdict where the workflow expects them."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402


def set_style() -> None:
    """Apply one seaborn style to every figure of the study."""
    sns.set_theme(context="paper", style="whitegrid", palette="colorblind", font_scale=1.1)
    plt.rcParams.update({"figure.dpi": 120, "savefig.dpi": 200, "savefig.bbox": "tight"})


def save_figure(figure: plt.Figure, outputs: dict[str, str], title: str, scale: str) -> None:
    """Title the figure, state its scale underneath, and write it as PDF and PNG."""
    figure.suptitle(title, fontsize="large")
    figure.text(0.5, -0.02, scale, ha="center", va="top", fontsize="small", style="italic")
    for key in ("pdf", "png"):
        Path(outputs[key]).parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(outputs[key])
    plt.close(figure)


def save_table(frame: pd.DataFrame, outputs: dict[str, str]) -> None:
    """Write the data behind a figure or table as CSV."""
    Path(outputs["table"]).parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(outputs["table"], index=False)


def save_verdict(
    outputs: dict[str, str], output_id: str, claim: str, verdict: str, sentence: str, scale: str, caption: str, **numbers: Any
) -> None:
    """Write the verdict on one claim: ``supported``, ``not supported`` or ``inconclusive``, with the measured sentence."""
    if verdict not in ("supported", "not supported", "inconclusive"):
        raise ValueError(f"verdict must be supported, not supported or inconclusive, got {verdict!r}")
    # JSON has no NaN; the report reads missing numbers as null.
    finite = {key: (None if isinstance(value, float) and not math.isfinite(value) else value) for key, value in numbers.items()}
    record = {
        "id": output_id, "claim": claim, "verdict": verdict, "sentence": sentence,
        "caption": caption, "scale": scale, "numbers": finite,
    }
    Path(outputs["verdict"]).parent.mkdir(parents=True, exist_ok=True)
    Path(outputs["verdict"]).write_text(json.dumps(record, indent=2, default=float))
