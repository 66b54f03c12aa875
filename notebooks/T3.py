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
# # T3: closed-form curvature against Hutchinson estimates
#
# Scale-amended SGD summarises each local Hessian by one number, `m ~ trace/dim`,
# from closed forms in batch statistics. This table compares those values with
# Hutchinson estimates of `trace/dim` of the exact Gauss-Newton operators, per
# block of VGG13 with and without batch normalisation. It averages over seeds
# and analysed epochs, and adds the exact `trace/dim` where the analysis
# computed an exact spectrum. A ratio of 1 means the closed form is exact.

# %% tags=["parameters"]
output_id = "T3"
runs = []
backmatching = []
scale = ""
outputs = {}

# %%
import numpy as np

from backmatch.reporting.load import load_hessian
from backmatch.reporting.output import save_table, save_verdict
from backmatch.reporting.stats import format_number

hessian = load_hessian(runs).dropna(subset=["block", "m_closed", "hutchinson_mean"])
# An exact spectrum's mean eigenvalue is the exact trace/dim.
exact_mean = hessian["mean_eigenvalue"].where(hessian["exact"] == True)  # noqa: E712 - column of bools
hessian = hessian.assign(ratio=hessian["m_closed"] / hessian["hutchinson_mean"], exact_mean=exact_mean)
table = (
    hessian.groupby(["variant", "index", "block", "matrix"], sort=True)
    .agg(m_closed=("m_closed", "mean"), hutchinson=("hutchinson_mean", "mean"), exact=("exact_mean", "mean"), ratio=("ratio", "mean"),
         ratio_min=("ratio", "min"), ratio_max=("ratio", "max"), analyses=("ratio", "size"))
    .reset_index()
    .drop(columns="index")
)
save_table(table, outputs)
table

# %% [markdown]
# Verdict: supported when the median `|log10 ratio|` over all analyses is below
# `log10(1.25)` (within 25%) for both matrices, not supported when it exceeds
# `log10(2)` for either, inconclusive in between. Hutchinson estimates carry
# their own sampling error, which `probes` in the config controls.

# %%
error = hessian.assign(log_error=np.log10(hessian["ratio"]).abs()).groupby("matrix")["log_error"].median()
within_ten = hessian.assign(close=(hessian["ratio"] - 1).abs() <= 0.1).groupby("matrix")["close"].mean()
if len(error) == 2 and (error < np.log10(1.25)).all():
    verdict = "supported"
elif (error > np.log10(2)).any():
    verdict = "not supported"
else:
    verdict = "inconclusive"
sentence = "; ".join(
    f"{matrix}: median closed-form / Hutchinson ratio {format_number(10 ** error[matrix])}x off, "
    f"{format_number(100 * within_ten[matrix])}% of analyses within 10%"
    for matrix in error.index
) + f" ({len(hessian) // 2} block analyses; supported means a median error within 25% for both matrices)."
save_verdict(
    outputs, output_id,
    claim="The closed-form scalar curvatures of scale-amended SGD approximate trace/dim of the local Hessians.",
    verdict=verdict, sentence=sentence, scale=scale,
    caption="Closed-form m against Hutchinson estimates of trace/dim of the exact local Hessians H_W and H_z, "
    "per block of VGG13 with and without batch normalisation, mean over seeds and analysed epochs.",
    **{f"median_log10_error_{matrix}": float(value) for matrix, value in error.items()},
)
print(verdict, sentence)
