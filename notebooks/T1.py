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
# # T1: one back-matching pass against one back-propagation step
#
# For each network, one back-matching pass replaces every argmin by one
# gradient step. With "unit" steps the step size is 1, and the result is
# compared with `W - eta dL/dW`. With "scaled" steps the sizes are `1/m_W` and
# `1/m_z` with random m in [0.5, 2], and the result is compared with SGD at the
# per-block rate `eta / (m_W prod_{k>b} m_z)`. The table gives, per network
# and step rule, the largest absolute parameter difference over blocks and
# seeds, next to the largest update, in float64.

# %% tags=["parameters"]
output_id = "T1"
runs = []
backmatching = []
scale = ""
outputs = {}

# %%
from backmatch.reporting.load import load_backmatching
from backmatch.reporting.output import save_table, save_verdict
from backmatch.reporting.stats import format_number

#: Largest difference that counts as equality in float64 after one pass.
TOLERANCE = 1e-10

records = load_backmatching(backmatching)
table = (
    records.groupby(["network", "steps"], sort=False)
    .agg(blocks=("block", "nunique"), seeds=("seed", "nunique"), max_abs_diff=("max_abs_diff", "max"),
         max_abs_update=("max_abs_update", "max"))
    .reset_index()
)
table["equal"] = table["max_abs_diff"] < TOLERANCE
save_table(table, outputs)
table

# %%
worst = records["max_abs_diff"].max()
verdict = "supported" if bool(table["equal"].all()) else "not supported"
sentence = (
    f"Across {table['network'].nunique()} networks, {records['block'].nunique()} block names and "
    f"{records['seed'].nunique()} seed(s), the largest difference between one back-matching pass and one BP step "
    f"is {format_number(worst)} (float64; tolerance {TOLERANCE:g}) for updates up to "
    f"{format_number(records['max_abs_update'].max())}."
)
save_verdict(
    outputs, output_id,
    claim="One back-matching pass with one gradient step per block equals one step of back-propagation.",
    verdict=verdict, sentence=sentence, scale=scale,
    caption="Largest absolute difference between the parameters after one back-matching pass and after one "
    "BP step, per network and step rule, over blocks and seeds (float64).",
    worst=worst,
)
print(verdict, sentence)
