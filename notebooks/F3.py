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
# # F3: VGG13 with against without batch normalisation
#
# Batch normalisation centres the inputs of each unit and divides by their
# standard deviation: `w_i` becomes a null direction of `H_W` (scale
# invariance), `H_W` scales as `1/||w_i||^2`, and `H_z` is row-equilibrated.
# The figure shows the condition numbers of `H_W` (exact, per-unit blocks) and
# `H_z` per block over training, and the mean eigenvalue of `H_W` against the
# mean squared row norm of the weight for the batch-normalised blocks.
#
# `H_z` of a convolution is too large for an exact spectrum here, so its
# condition number comes from the fan-in sized patch factor. That is an
# approximation, recorded as `exact = False` in the table. The classifier's
# spectrum is exact.

# %% tags=["parameters"]
output_id = "F3"
runs = []
backmatching = []
scale = ""
outputs = {}

# %%
import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns

from backmatch.reporting.conditioning import condition_panel, condition_table, median_condition
from backmatch.reporting.load import load_hessian
from backmatch.reporting.output import save_figure, save_table, save_verdict, set_style
from backmatch.reporting.stats import format_number

set_style()
hessian = load_hessian(runs)
epochs = sorted(hessian["epoch"].unique())
analysed = hessian.dropna(subset=["block"])

# %%
bn_weights = analysed[(analysed["matrix"] == "H_W") & (analysed["bn"] == True)]  # noqa: E712 - column of bools
bn_weights = bn_weights.dropna(subset=["m_closed", "mean_eigenvalue"])

figure, axes = plt.subplots(1, 3, figsize=(16, 4.4), layout="constrained")
condition_panel(analysed, "H_W", axes[0], "Condition number of $H_W$")
condition_panel(analysed, "H_z", axes[1], "Condition number of $H_z$")
slope = np.nan
if len(bn_weights) > 1:
    sns.scatterplot(data=bn_weights, x="m_closed", y="mean_eigenvalue", hue="block", style="epoch", palette="viridis", ax=axes[2])
    axes[2].legend(fontsize="xx-small", ncol=2, title="block, epoch", title_fontsize="x-small")
    slope = np.polyfit(np.log10(bn_weights["m_closed"]), np.log10(bn_weights["mean_eigenvalue"]), 1)[0]
    limits = [bn_weights[["m_closed", "mean_eigenvalue"]].min().min() / 1.5, bn_weights[["m_closed", "mean_eigenvalue"]].max().max() * 1.5]
    axes[2].plot(limits, limits, color="grey", linestyle="--", linewidth=1)
axes[2].set(
    xscale="log", yscale="log", xlabel=r"mean over units of $\gamma_i^2 \rho_i N / ||w_i||^2$",
    ylabel="mean eigenvalue of $H_W$ (exact)", title=f"BN blocks: the $1/||w||^2$ law (slope {slope:.2f})",
)
save_figure(figure, outputs, "VGG13 with against without batch normalisation", scale)

# %% [markdown]
# The third panel puts the exact mean eigenvalue of `H_W` of every
# batch-normalised block, seed and epoch against the `1/||w_i||^2` law
# `gamma_i^2 rho_i N / ||w_i||^2`, which assumes isotropic inputs. A log-log
# slope of 1 means `H_W` follows the law across blocks and training. A pure
# rescaling of the weights follows it exactly, which a unit test checks.

# %%
table = condition_table(analysed)
save_table(table, outputs)
table

# %% [markdown]
# Verdict: supported when, at every analysed epoch, the median condition number
# over blocks and seeds is lower with batch normalisation for both `H_W` and
# `H_z`. It is not supported when it is higher for both at every epoch.

# %%
comparisons = {
    (matrix, epoch): (median_condition(analysed, matrix, "bn", epoch), median_condition(analysed, matrix, "no_bn", epoch))
    for matrix in ("H_W", "H_z")
    for epoch in epochs
}
lower = [bn < plain for bn, plain in comparisons.values() if not (np.isnan(bn) or np.isnan(plain))]
if lower and all(lower):
    verdict = "supported"
elif lower and not any(lower):
    verdict = "not supported"
else:
    verdict = "inconclusive"
parts = [
    f"{matrix} epoch {epoch}: {format_number(bn)} with BN vs {format_number(plain)} without"
    for (matrix, epoch), (bn, plain) in comparisons.items()
]
# How far the patch factor is from the exact H_z: its largest eigenvalue against
# the Lanczos estimate of the exact operator's.
patch = analysed[(analysed["matrix"] == "H_z") & (analysed["method"] == "patch_factor")].dropna(subset=["lanczos_lambda_max", "lambda_max"])
patch_gap = float((patch["lanczos_lambda_max"] / patch["lambda_max"]).median()) if len(patch) else np.nan
sentence = (
    "Median condition numbers over blocks and seeds: " + "; ".join(parts)
    + f". H_z of convolutions comes from the patch-factor approximation, whose largest eigenvalue is a median "
    + f"{format_number(patch_gap)} times below the exact operator's (Lanczos)."
    + f" The mean eigenvalue of H_W of BN blocks follows gamma^2 rho N / ||w||^2 with log-log slope {format_number(slope)}."
)
save_verdict(
    outputs, output_id,
    claim="Batch normalisation improves the conditioning of the local Hessians and scales H_W as 1/||w||^2.",
    verdict=verdict, sentence=sentence, scale=scale,
    caption="VGG13 with against without batch normalisation: condition numbers of H_W and H_z per block over "
    "training (mean and 95% interval over seeds; H_z of convolutions from the patch-factor approximation), and "
    "the exact mean eigenvalue of H_W of the BN blocks against the 1/||w||^2 law.",
    slope=slope, patch_factor_gap=patch_gap,
)
print(verdict, sentence)
