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
# # F1: orthonormal against Gaussian initialisation of a deep MLP
#
# For an orthonormal weight matrix `W^T W = I`, and with ReLU the non-zero
# spectrum of `W^T D W` is a single value, so the local Hessian `H_z` of every
# block has condition number 1 at initialisation; Gaussian weights spread the
# spectrum. The figure shows the condition numbers of `H_z` and `H_W` per block
# at initialisation and after training (non-null spectrum, null directions
# removed by the rule recorded in each analysis), and the training loss of both
# initialisations.

# %% tags=["parameters"]
output_id = "F1"
runs = []
backmatching = []
scale = ""
outputs = {}

# %%
import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns

from backmatch.reporting.conditioning import condition_panel, condition_table, median_condition
from backmatch.reporting.load import load_hessian, load_metrics
from backmatch.reporting.output import save_figure, save_table, save_verdict, set_style
from backmatch.reporting.plots import integer_ticks, interval, label_variants
from backmatch.reporting.stats import format_number

set_style()
hessian = load_hessian(runs)
metrics = load_metrics(runs)
first_epoch, last_epoch = int(hessian["epoch"].min()), int(hessian["epoch"].max())

# %%
figure, axes = plt.subplots(1, 3, figsize=(15, 4.2), layout="constrained")
condition_panel(hessian, "H_z", axes[0], "$H_z$ (input)")
condition_panel(hessian, "H_W", axes[1], "$H_W$ (weights)")
sns.lineplot(data=label_variants(metrics), x="epoch", y="train_loss", hue="variant", errorbar=interval, marker="o", ax=axes[2])
axes[2].set(ylabel="training loss (nats)", title="Training loss")
axes[2].legend(title=None)
integer_ticks(axes[2])
save_figure(figure, outputs, "Deep MLP: orthonormal against Gaussian initialisation", scale)

# %%
table = condition_table(hessian)
save_table(table, outputs)
table[table["epoch"] == first_epoch]

# %% [markdown]
# Verdict: supported when every block of every orthonormal network has
# condition number 1 for `H_z` at initialisation and the Gaussian networks do
# not. The weights are stored in float32, so "1" means within 1e-5.

# %%
at_init = hessian[(hessian["epoch"] == first_epoch) & (hessian["matrix"] == "H_z")]
orthogonal = at_init[at_init["variant"] == "orthogonal"]["condition_number"]
worst_orthogonal = float(orthogonal.max()) if len(orthogonal) else np.nan
gaussian_median = median_condition(hessian, "H_z", "gaussian", first_epoch)
if np.isnan(worst_orthogonal) or np.isnan(gaussian_median):
    verdict = "inconclusive"
elif abs(worst_orthogonal - 1) < 1e-5 and gaussian_median > 1 + 1e-5:
    verdict = "supported"
else:
    verdict = "not supported"

final_loss = metrics[metrics["epoch"] == metrics["epoch"].max()].groupby("variant")["train_loss"].mean()
sentence = (
    f"At initialisation the largest condition number of H_z over all blocks of the orthonormal MLPs is "
    f"{format_number(worst_orthogonal, 7)} against a median of {format_number(gaussian_median)} with Gaussian init; "
    f"after training (epoch {last_epoch}) the medians are {format_number(median_condition(hessian, 'H_z', 'orthogonal', last_epoch))} "
    f"and {format_number(median_condition(hessian, 'H_z', 'gaussian', last_epoch))}, and the final training loss is "
    f"{format_number(final_loss.get('orthogonal', np.nan))} against {format_number(final_loss.get('gaussian', np.nan))} nats."
)
save_verdict(
    outputs, output_id,
    claim="Orthonormal initialisation gives local Hessians H_z with condition number 1; Gaussian initialisation spreads them.",
    verdict=verdict, sentence=sentence, scale=scale,
    caption="Condition numbers of H_z and H_W per block of a deep MLP, orthonormal against Gaussian "
    "initialisation, at initialisation and after training (mean and 95% interval over seeds), and training loss.",
    worst_orthogonal=worst_orthogonal, gaussian_median=gaussian_median,
)
print(verdict, sentence)
