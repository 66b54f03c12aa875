# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # F6: per-block effective learning rates and weight norms over training
#
# With batch normalisation a weight row is scale invariant, so its direction
# moves with the effective rate `lr_b / ||w_i||^2`: under SGD the rate drifts as
# the weight norm grows. Scale-amended SGD sets `lr_b` proportional to
# `||w||^2` for such blocks, which should cancel the drift. The effective rate is
# shown relative to the scheduled base rate, so planned decays do not appear.

# %% tags=["parameters"]
output_id = "F6"
runs = []
backmatching = []
scale = ""
outputs = {}

# %%
import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns

from backmatch.reporting.drift import effective_rate_drift
from backmatch.reporting.load import load_blocks, load_metrics
from backmatch.reporting.output import save_figure, save_table, save_verdict, set_style
from backmatch.reporting.plots import LABELS, integer_ticks
from backmatch.reporting.stats import format_number

set_style()
blocks = load_blocks(runs)
metrics = load_metrics(runs)
base = metrics[["variant", "seed", "epoch", "lr"]].rename(columns={"lr": "base_lr"})
frame = blocks[blocks["epoch"] > 0].merge(base, on=["variant", "seed", "epoch"])
frame = frame.assign(
    relative_rate=frame["effective_lr"] / frame["base_lr"],
    optimizer=frame["variant"].map(LABELS),
)

# %%
optimizers = [LABELS[name] for name in ("sgd", "sa_sgd") if name in set(blocks["variant"])]
norms = blocks.assign(optimizer=blocks["variant"].map(LABELS))
figure, axes = plt.subplots(2, len(optimizers), figsize=(5.5 * len(optimizers), 7), layout="constrained", sharey="row", squeeze=False)
for column, optimizer in enumerate(optimizers):
    sns.lineplot(
        data=frame[frame["optimizer"] == optimizer], x="epoch", y="relative_rate", hue="block", errorbar=None,
        palette="viridis", marker="o", legend=column == len(optimizers) - 1, ax=axes[0, column],
    )
    axes[0, column].set(yscale="log", ylabel="effective rate / base rate", title=optimizer)
    sns.lineplot(
        data=norms[norms["optimizer"] == optimizer], x="epoch", y="weight_norm", hue="block", errorbar=None,
        palette="viridis", marker="o", legend=False, ax=axes[1, column],
    )
    axes[1, column].set(yscale="log", ylabel="$||W_b||_F$")
    for axis in axes[:, column]:
        integer_ticks(axis)
axes[0, -1].legend(fontsize="x-small", ncol=2, title="block", loc="center left", bbox_to_anchor=(1.02, 0.5))
save_figure(figure, outputs, "CIFAR-10, VGG13-BN: effective learning rates and weight norms per block", scale)

# %%
drift = effective_rate_drift(blocks, metrics)
save_table(drift, outputs)
summary = drift.assign(abs_drift=drift["log10_drift"].abs()).groupby("variant")[["abs_drift", "weight_norm_ratio"]].median()
summary

# %% [markdown]
# Verdict: the median over BN blocks and seeds of `|log10(last / first)|` of the
# relative effective rate, scale-amended SGD against SGD. Cancelling needs a
# drift to cancel: when SGD's rates drift by less than a factor of 1.25 over the
# run, the verdict is inconclusive. Otherwise it is supported when scale-amended
# SGD drifts less than half as much as SGD, and not supported when it drifts more.

# %%
sgd_drift = summary.loc["sgd", "abs_drift"] if "sgd" in summary.index else np.nan
amended_drift = summary.loc["sa_sgd", "abs_drift"] if "sa_sgd" in summary.index else np.nan
MINIMUM_DRIFT = np.log10(1.25)
if np.isnan(sgd_drift) or np.isnan(amended_drift) or sgd_drift < MINIMUM_DRIFT:
    verdict = "inconclusive"
elif amended_drift < 0.5 * sgd_drift:
    verdict = "supported"
elif amended_drift > sgd_drift:
    verdict = "not supported"
else:
    verdict = "inconclusive"
sentence = (
    f"Over training, the effective rate of batch-normalised blocks drifts by a median factor of "
    f"10^{format_number(sgd_drift)} under SGD (weight norms grow by {format_number(summary['weight_norm_ratio'].get('sgd', np.nan))}x) "
    f"and 10^{format_number(amended_drift)} under scale-amended SGD."
    + (" SGD's drift is below the factor of 1.25 needed to test cancelling." if sgd_drift < MINIMUM_DRIFT else "")
)
save_verdict(
    outputs, output_id,
    claim="Batch normalisation makes the effective learning rate drift as eta / ||w||^2; scale-amended SGD cancels the drift.",
    verdict=verdict, sentence=sentence, scale=scale,
    caption="Per-block effective learning rate (relative to the scheduled base rate, top) and weight norm "
    "(bottom) over training, SGD against scale-amended SGD, mean over seeds.",
    sgd_drift=sgd_drift, amended_drift=amended_drift,
)
print(verdict, sentence)
