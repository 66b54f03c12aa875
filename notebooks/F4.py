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
# # F4: CIFAR-10 learning curves, SGD against scale-amended SGD
#
# VGG13 with batch normalisation, trained with SGD and with scale-amended SGD
# (per-block rates from the local curvatures), same momentum, weight decay and
# schedule. Lines are means over seeds, bands 95% Student-t intervals.

# %% tags=["parameters"]
output_id = "F4"
runs = []
backmatching = []
scale = ""
outputs = {}

# %%
from backmatch.reporting.load import load_metrics, load_summaries
from backmatch.reporting.optimizers import accuracy_verdict
from backmatch.reporting.output import save_figure, save_table, save_verdict, set_style
from backmatch.reporting.plots import learning_curves
from backmatch.reporting.stats import summarise

set_style()
metrics = load_metrics(runs)
summaries = load_summaries(runs)

# %%
figure = learning_curves(metrics)
save_figure(figure, outputs, "CIFAR-10, VGG13-BN: SGD against scale-amended SGD", scale)

# %%
curves = summarise(metrics, ["variant", "epoch"], "test_acc").rename(columns={"mean": "test_acc_mean"})
save_table(curves, outputs)
curves

# %%
save_verdict(outputs, output_id, scale=scale, **accuracy_verdict(summaries, "CIFAR-10"))
