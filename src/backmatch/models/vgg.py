"""VGG13 for 32x32 inputs, as a chain of conv(+BN)+ReLU(+pool) blocks."""

from __future__ import annotations

import math

from torch import nn

from backmatch.models.blocks import BlockNetwork, ConvBlock, LinearBlock

#: Output channels of the ten 3x3 convolutions at width 1; "M" is a 2x2 max-pool,
#: which joins the block before it. Five pools take 32x32 inputs to 1x1.
VGG13_LAYOUT = (64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")


def scaled_channels(channels: int, width: float) -> int:
    """Return ``channels * width`` rounded, at least 1.

    Example:
        >>> scaled_channels(64, 0.125), scaled_channels(64, 0.001)
        (8, 1)
    """
    return max(1, round(channels * width))


def vgg13(num_classes: int, width: float = 1.0, batch_norm: bool = True) -> BlockNetwork:
    """Build VGG13 with He-initialised convolutions.

    Args:
        num_classes: outputs of the final linear classifier.
        width: multiplier on every channel count; 1 is the published network
            (9.4 million weights), 1/8 has 64 channels in the last convolution.
        batch_norm: insert batch normalisation between each convolution and its ReLU.

    Example:
        >>> net = vgg13(10, width=0.125)
        >>> [block.name for block in net.blocks()][-3:]
        ['conv9', 'conv10', 'fc']
    """
    if width <= 0:
        raise ValueError(f"width multiplier must be positive, got {width}")

    named = []
    in_channels = 3
    convs = [entry for entry in VGG13_LAYOUT if entry != "M"]
    pooled_after = {index for index, entry in enumerate(VGG13_LAYOUT) if entry == "M"}
    position = 0
    for number, channels in enumerate(convs, start=1):
        out_channels = scaled_channels(channels, width)
        pool = position + 1 in pooled_after
        named.append((f"conv{number}", "conv", ConvBlock(in_channels, out_channels, batch_norm=batch_norm, pool=pool)))
        in_channels = out_channels
        position += 2 if pool else 1

    named.append(("fc", "linear", LinearBlock(in_channels, num_classes, relu=False, flatten=True)))
    network = BlockNetwork(named)
    _he_init(network)
    return network


def _he_init(network: BlockNetwork) -> None:
    for module in network.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            # The classifier has no ReLU after it, so its gain is 1.
            nn.init.normal_(module.weight, std=1.0 / math.sqrt(module.in_features))
            nn.init.zeros_(module.bias)
