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
# # T2: final and best test accuracy, SGD against scale-amended SGD
#
# One row per dataset and optimiser: mean and standard deviation over seeds of
# the final and the best test accuracy, and for scale-amended SGD the mean
# paired difference to SGD (same seed) with the two-sided paired t-test p-value.

# %% tags=["parameters"]
output_id = "T2"
runs = []
backmatching = []
scale = ""
outputs = {}

# %%
from backmatch.reporting.load import load_summaries
from backmatch.reporting.optimizers import CLAIM, accuracy_table
from backmatch.reporting.output import save_table, save_verdict
from backmatch.reporting.stats import format_number

summaries = load_summaries(runs)
table = accuracy_table(summaries)
save_table(table, outputs)
table

# %% [markdown]
# The verdict needs a significant paired difference (p < 0.05) on every dataset;
# a significant loss on any dataset means the claim is not supported.

# %%
compared = table[table["optimizer"] != "sgd"]
significant = compared[compared["paired_p"] < 0.05]
if (significant["final_diff_vs_sgd"] < 0).any():
    verdict = "not supported"
elif len(compared) and len(significant) == len(compared) and (significant["final_diff_vs_sgd"] > 0).all():
    verdict = "supported"
else:
    verdict = "inconclusive"

parts = [
    f"{row.dataset}: {format_number(row.final_diff_vs_sgd)} (p = {format_number(row.paired_p)})"
    for row in compared.itertuples()
]
sentence = "Final test accuracy of scale-amended SGD minus SGD, paired over seeds: " + "; ".join(parts) + "."
save_verdict(
    outputs, output_id, claim=CLAIM, verdict=verdict, sentence=sentence, scale=scale,
    caption="Final and best test accuracy per dataset and optimiser (VGG13-BN), mean and standard deviation over "
    "seeds, with the paired difference to SGD and its t-test p-value.",
    datasets=len(compared), significant=len(significant),
)
print(verdict, sentence)
