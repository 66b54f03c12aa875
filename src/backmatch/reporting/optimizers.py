"""Comparisons of SGD and scale-amended SGD over seeds."""

from __future__ import annotations

import math

import pandas as pd

from backmatch.reporting.stats import format_number, mean_interval, paired_test

CLAIM = "Scale-amended SGD trains VGG13-BN at least as well as SGD."


def paired_accuracies(summaries: pd.DataFrame, column: str) -> tuple[list[float], list[float]]:
    """Return the accuracies of scale-amended SGD and SGD for the seeds where both finished."""
    table = summaries.pivot_table(index=["dataset", "seed"], columns="variant", values=column)
    table = table.dropna(subset=[name for name in ("sa_sgd", "sgd") if name in table.columns])
    if "sa_sgd" not in table.columns or "sgd" not in table.columns:
        return [], []
    return table["sa_sgd"].tolist(), table["sgd"].tolist()


def accuracy_verdict(summaries: pd.DataFrame, dataset_name: str) -> dict:
    """Return the verdict fields on final test accuracy, scale-amended SGD minus SGD, paired over seeds."""
    amended, plain = paired_accuracies(summaries, "final_test_acc")
    difference, p_value = paired_test(amended, plain) if amended else (math.nan, math.nan)
    mean_amended = mean_interval(amended)[0]
    mean_plain = mean_interval(plain)[0]
    diverged = int((summaries["status"] == "diverged").sum())

    # Only a significant paired difference decides; with few seeds most
    # laptop-scale comparisons stay inconclusive.
    if len(amended) >= 2 and not math.isnan(p_value) and p_value < 0.05:
        verdict = "supported" if difference > 0 else "not supported"
    else:
        verdict = "inconclusive"
    sentence = (
        f"On {dataset_name}, final test accuracy is {format_number(mean_amended)} with scale-amended SGD and "
        f"{format_number(mean_plain)} with SGD (difference {format_number(difference)}, paired t-test "
        f"p = {format_number(p_value)}, {len(amended)} seed pair(s)"
        + (f", {diverged} diverged run(s)" if diverged else "")
        + ")."
    )
    return {
        "claim": CLAIM,
        "verdict": verdict,
        "sentence": sentence,
        "caption": f"{dataset_name} learning curves of VGG13-BN, SGD against scale-amended SGD: training loss "
        "and test accuracy per epoch, mean and 95% interval over seeds.",
        "difference": difference,
        "p_value": p_value,
        "pairs": len(amended),
    }


def accuracy_table(summaries: pd.DataFrame) -> pd.DataFrame:
    """Return final and best test accuracy per dataset and optimiser, with the paired comparison."""
    rows = []
    for (dataset, variant), group in summaries.groupby(["dataset", "variant"], sort=True):
        finished = group[group["status"] == "completed"]
        row = {
            "dataset": dataset,
            "optimizer": variant,
            "seeds": len(group),
            "diverged": int((group["status"] == "diverged").sum()),
            "final_acc_mean": finished["final_test_acc"].mean(),
            "final_acc_std": finished["final_test_acc"].std(ddof=1),
            "best_acc_mean": group["best_test_acc"].mean(),
            "best_acc_std": group["best_test_acc"].std(ddof=1),
            "final_diff_vs_sgd": math.nan,
            "paired_p": math.nan,
        }
        if variant != "sgd":
            amended, plain = paired_accuracies(summaries[summaries["dataset"] == dataset], "final_test_acc")
            row["final_diff_vs_sgd"], row["paired_p"] = paired_test(amended, plain) if amended else (math.nan, math.nan)
        rows.append(row)
    return pd.DataFrame(rows)
