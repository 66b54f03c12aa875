"""Plot helpers shared by several notebooks."""

from __future__ import annotations

import matplotlib.pyplot as plt
from matplotlib.ticker import MaxNLocator
import pandas as pd
import seaborn as sns

from backmatch.reporting.stats import mean_interval

#: Readable names of variants and matrices in legends.
LABELS = {
    "sgd": "SGD",
    "sa_sgd": "scale-amended SGD",
    "orthogonal": "orthonormal init",
    "gaussian": "Gaussian init",
    "residual": "residual blocks",
    "plain": "plain blocks",
    "bn": "with BN",
    "no_bn": "without BN",
    "H_W": "$H_W$",
    "H_z": "$H_z$",
}


def interval(values) -> tuple[float, float]:
    """95% Student-t interval of the mean, as seaborn's ``errorbar`` callable expects."""
    _, low, high = mean_interval(list(values))
    return low, high


def label_variants(frame: pd.DataFrame, column: str = "variant") -> pd.DataFrame:
    """Return a copy whose ``column`` contains legend names instead of config keys."""
    return frame.assign(**{column: frame[column].map(lambda name: LABELS.get(name, name))})


def learning_curves(metrics: pd.DataFrame) -> plt.Figure:
    """Draw train loss and test accuracy against epoch, one line per variant, mean and 95% interval over seeds."""
    frame = label_variants(metrics)
    figure, axes = plt.subplots(1, 2, figsize=(10, 3.8), layout="constrained")
    sns.lineplot(data=frame, x="epoch", y="train_loss", hue="variant", errorbar=interval, marker="o", ax=axes[0])
    axes[0].set(ylabel="training loss (nats)", title="Training loss")
    sns.lineplot(data=frame, x="epoch", y="test_acc", hue="variant", errorbar=interval, marker="o", ax=axes[1])
    axes[1].set(ylabel="test accuracy", title="Test accuracy")
    for axis in axes:
        axis.legend(title=None)
        integer_ticks(axis)
    return figure


def integer_ticks(axis: plt.Axes) -> None:
    """Put x ticks on whole numbers only, as epochs are."""
    axis.xaxis.set_major_locator(MaxNLocator(integer=True))
