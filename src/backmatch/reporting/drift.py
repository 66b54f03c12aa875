"""Effective learning rates of batch-normalised blocks over training."""

from __future__ import annotations

import numpy as np
import pandas as pd


def effective_rate_drift(blocks: pd.DataFrame, metrics: pd.DataFrame) -> pd.DataFrame:
    """Return, per run and BN block, how far the effective rate drifts relative to the schedule.

    The effective rate of a batch-normalised weight is ``lr_b / ||w_i||^2``. Dividing
    it by the scheduled base rate of the epoch removes the planned decays, so what
    remains is the drift caused by the weight norm (and, under scale-amended SGD,
    by the curvature factor). ``log10_drift`` compares the last epoch with the first.
    """
    base = metrics[["experiment", "variant", "dataset", "seed", "epoch", "lr"]].rename(columns={"lr": "base_lr"})
    trained = blocks[(blocks["epoch"] > 0) & blocks["bn"]].merge(base, on=["experiment", "variant", "dataset", "seed", "epoch"])
    trained = trained.assign(relative_rate=trained["effective_lr"] / trained["base_lr"])
    rows = []
    for key, group in trained.groupby(["variant", "dataset", "seed", "block"], sort=True):
        group = group.sort_values("epoch")
        first, last = group.iloc[0], group.iloc[-1]
        rows.append({
            **dict(zip(["variant", "dataset", "seed", "block"], key)),
            "first_epoch": int(first["epoch"]),
            "last_epoch": int(last["epoch"]),
            "weight_norm_ratio": last["weight_norm"] / first["weight_norm"],
            "log10_drift": float(np.log10(last["relative_rate"] / first["relative_rate"])),
        })
    return pd.DataFrame(rows)
