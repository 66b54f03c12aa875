"""Models of the study, all built from named blocks."""

from backmatch.models.blocks import BLOCK_KINDS, Block, BlockNetwork
from backmatch.models.mlp import mlp
from backmatch.models.vgg import vgg13

__all__ = ["BLOCK_KINDS", "Block", "BlockNetwork", "build_model", "mlp", "vgg13"]


def build_model(settings, num_classes: int) -> BlockNetwork:
    """Build the untrained network that ``settings`` (a ``TrainSettings``) describes."""
    if settings.model == "vgg13":
        return vgg13(num_classes, width=settings.width, batch_norm=settings.bn)
    if settings.model == "mlp":
        return mlp(
            num_classes,
            width=max(1, round(settings.width)),
            depth=settings.depth,
            relu=settings.relu,
            init=settings.init,
            residual=settings.residual,
            branch_scale=settings.branch_scale,
        )
    raise ValueError(f"unknown model {settings.model!r}; expected vgg13 or mlp")
