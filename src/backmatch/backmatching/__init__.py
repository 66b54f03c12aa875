"""Back-matching propagation and its comparison with one back-propagation step."""

from backmatch.backmatching.algorithm import MODES, BackMatchingPass, back_matching_loss, back_matching_pass
from backmatch.backmatching.comparison import compare_with_gradient_step, gradient_step, per_block_rates, random_steps

__all__ = [
    "MODES",
    "BackMatchingPass",
    "back_matching_loss",
    "back_matching_pass",
    "compare_with_gradient_step",
    "gradient_step",
    "per_block_rates",
    "random_steps",
]
