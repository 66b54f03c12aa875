"""Condition numbers per block from local Hessian records."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from backmatch.reporting.plots import interval, label_variants


def block_order(hessian: pd.DataFrame) -> list[str]:
    """Return block names in forward order."""
    return hessian.dropna(subset=["block"]).sort_values("index").drop_duplicates("block")["block"].tolist()


def condition_panel(hessian: pd.DataFrame, matrix: str, axis: plt.Axes, title: str) -> None:
    """Plot the condition number of ``matrix`` per block: one line per variant and epoch, 95% interval over seeds."""
    frame = label_variants(hessian[(hessian["matrix"] == matrix) & hessian["condition_number"].notna()])
    frame = frame.assign(epoch=frame["epoch"].map(lambda epoch: f"epoch {epoch}"))
    order = block_order(hessian)
    frame = frame.assign(position=frame["block"].map({name: index for index, name in enumerate(order)}))
    sns.lineplot(
        data=frame, x="position", y="condition_number", hue="variant", style="epoch", errorbar=interval,
        marker="o", ax=axis,
    )
    axis.set(yscale="log", xlabel="block", ylabel="condition number", title=title)
    axis.set_xticks(range(len(order)), order, rotation=45, ha="right", fontsize="x-small")
    axis.legend(fontsize="x-small")


def median_condition(hessian: pd.DataFrame, matrix: str, variant: str, epoch: int, blocks: list[str] | None = None) -> float:
    """Return the median condition number of ``matrix`` over blocks and seeds of one variant and epoch."""
    rows = hessian[(hessian["matrix"] == matrix) & (hessian["variant"] == variant) & (hessian["epoch"] == epoch)]
    if blocks is not None:
        rows = rows[rows["block"].isin(blocks)]
    values = rows["condition_number"].dropna()
    return float(values.median()) if len(values) else float("nan")


def condition_table(hessian: pd.DataFrame) -> pd.DataFrame:
    """Return mean and 95% interval of the condition number per variant, epoch, block and matrix."""
    rows = []
    keys = ["variant", "epoch", "index", "block", "matrix"]
    for key, group in hessian.dropna(subset=["block"]).groupby(keys, sort=True):
        values = group["condition_number"].dropna().tolist()
        low, high = interval(values) if values else (np.nan, np.nan)
        rows.append({
            **dict(zip(keys, key)),
            "condition_mean": float(np.mean(values)) if values else np.nan,
            "condition_low": low,
            "condition_high": high,
            "method": ",".join(sorted(set(group["method"].dropna()))),
            "exact": bool(group["exact"].all()),
            "seeds": len(values),
        })
    return pd.DataFrame(rows)
