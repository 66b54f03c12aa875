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
# # F2: residual against plain blocks
#
# For a residual block `z + G(z)`, `H_z = (I + J_G)^T (I + J_G)`, so if
# `||J_G||_2 <= e < 1` its condition number is at most `((1 + e) / (1 - e))^2`.
# The assumption `||J_G|| < 1` is strong. The figure therefore measures `||J_G||_2`
# per residual block (power iteration) next to the condition numbers of `H_z`
# for residual and plain MLPs of the same depth, at initialisation and during
# training, and checks the bound on every block where `e < 1`.

# %% tags=["parameters"]
output_id = "F2"
runs = []
backmatching = []
scale = ""
outputs = {}

# %%
import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns

from backmatch.reporting.conditioning import block_order, condition_panel, condition_table, median_condition
from backmatch.reporting.load import load_hessian
from backmatch.reporting.output import save_figure, save_table, save_verdict, set_style
from backmatch.reporting.plots import interval
from backmatch.reporting.stats import format_number

set_style()
hessian = load_hessian(runs)
epochs = sorted(hessian["epoch"].unique())

residual = hessian[(hessian["variant"] == "residual") & (hessian["kind"] == "residual") & (hessian["matrix"] == "H_z")].copy()
e = residual["jg_norm"]
residual["bound"] = np.where(e < 1, ((1 + e) / (1 - e)) ** 2, np.nan)
residual["within_bound"] = np.where(e < 1, residual["condition_number"] <= residual["bound"] * (1 + 1e-9), np.nan)

# %%
figure, axes = plt.subplots(1, 3, figsize=(15, 4.2), layout="constrained")
condition_panel(hessian, "H_z", axes[0], "Condition number of $H_z$")

order = block_order(residual)
norms = residual.assign(position=residual["block"].map({name: index for index, name in enumerate(order)}), epoch=residual["epoch"].map(lambda x: f"epoch {x}"))
sns.lineplot(data=norms, x="position", y="jg_norm", hue="epoch", errorbar=interval, marker="o", ax=axes[1])
axes[1].axhline(1.0, color="grey", linestyle="--", linewidth=1)
axes[1].set(xlabel="residual block", ylabel="$||J_G||_2$", title="Spectral norm of the branch Jacobian")
axes[1].set_xticks(range(len(order)), order, rotation=45, ha="right", fontsize="x-small")

bounded = residual.dropna(subset=["bound"])
if len(bounded):
    sns.scatterplot(data=bounded.assign(epoch=bounded["epoch"].map(lambda x: f"epoch {x}")), x="bound", y="condition_number", hue="epoch", ax=axes[2])
    limits = [1, max(bounded["bound"].max(), bounded["condition_number"].max()) * 1.2]
    axes[2].plot(limits, limits, color="grey", linestyle="--", linewidth=1, label="bound")
axes[2].set(xscale="log", yscale="log", xlabel="((1+e)/(1-e))$^2$", ylabel="condition number of $H_z$", title="Bound, blocks with e < 1")
save_figure(figure, outputs, "Residual against plain MLP blocks", scale)

# %%
table = condition_table(hessian)
jg = residual.groupby(["epoch", "block"])["jg_norm"].agg(["mean", "max"]).reset_index().rename(columns={"mean": "jg_norm_mean", "max": "jg_norm_max"})
table = table.merge(jg.assign(variant="residual", matrix="H_z"), on=["variant", "epoch", "block", "matrix"], how="left")
save_table(table, outputs)
table

# %% [markdown]
# Verdict: supported when the bound holds on every residual block with `e < 1`
# and residual blocks have a lower median condition number of `H_z` than plain
# blocks at every analysed epoch. It is not supported when the bound fails anywhere.
# Residual blocks with `e >= 1` are outside the claim and counted separately.

# %%
checked = residual.dropna(subset=["bound"])
violations = int((checked["within_bound"] == 0).sum())
outside = int((residual["jg_norm"] >= 1).sum())
better = [median_condition(hessian, "H_z", "residual", epoch) < median_condition(hessian, "H_z", "plain", epoch) for epoch in epochs]
if violations:
    verdict = "not supported"
elif len(checked) and all(better):
    verdict = "supported"
else:
    verdict = "inconclusive"
parts = [
    f"epoch {epoch}: {format_number(median_condition(hessian, 'H_z', 'residual', epoch))} residual vs "
    f"{format_number(median_condition(hessian, 'H_z', 'plain', epoch))} plain"
    for epoch in epochs
]
sentence = (
    f"The bound holds on {len(checked) - violations} of {len(checked)} residual blocks with ||J_G|| < 1 "
    f"({outside} block analyses have ||J_G|| >= 1, median ||J_G|| = {format_number(float(residual['jg_norm'].median()))}); "
    f"median condition numbers of H_z: " + "; ".join(parts) + "."
)
save_verdict(
    outputs, output_id,
    claim="Skip connections bound the condition number of H_z by ((1+e)/(1-e))^2 when ||J_G|| <= e < 1.",
    verdict=verdict, sentence=sentence, scale=scale,
    caption="Residual against plain MLP blocks: condition number of H_z per block, spectral norm of the "
    "residual branch Jacobian, and the measured condition number against the bound ((1+e)/(1-e))^2.",
    violations=violations, checked=len(checked), outside=outside,
)
print(verdict, sentence)
