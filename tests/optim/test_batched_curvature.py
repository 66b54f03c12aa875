"""Batched closed forms against the one-block-at-a-time reference."""

import pytest
import torch
from torch import nn

from backmatch.models import mlp, vgg13
from backmatch.models.blocks import BlockNetwork, ConvBlock, LinearBlock, ResidualBlock
from backmatch.optim.batched_curvature import BatchedClosedForm
from backmatch.optim.curvature import closed_form_curvature, measure_closed_form
from backmatch.optim.statistics import RHO_MIN_SAMPLES, RHO_POSITIONS, StatisticsRecorder, rho_samples


def _mixed_network():
    """Every block type at once: BN with and without running statistics, no BN, stride 2, residual."""
    strided = ConvBlock(4, 6, batch_norm=False, pool=False)
    strided.layer = nn.Conv2d(4, 6, kernel_size=3, stride=2, padding=1)
    no_running = ConvBlock(6, 8, batch_norm=True, pool=False)
    no_running.batch_norm = nn.BatchNorm2d(8, track_running_stats=False)
    return BlockNetwork([
        ("bn", "conv", ConvBlock(3, 4, batch_norm=True, pool=True)),
        ("strided", "conv", strided),
        ("no_running", "conv", no_running),
        ("flat", "linear", LinearBlock(8 * 2 * 2, 12, relu=True, flatten=True)),
        ("residual", "residual", ResidualBlock(12, relu=True, scale=0.5)),
        ("fc", "linear", LinearBlock(12, 5, relu=False)),
    ])


NETWORKS = {
    "vgg13_bn": (lambda: vgg13(10, width=0.125), (48, 3, 32, 32)),
    "vgg13_bn_channels_last": (lambda: vgg13(10, width=0.125).to(memory_format=torch.channels_last), (48, 3, 32, 32)),
    "vgg13_no_bn": (lambda: vgg13(10, width=0.125, batch_norm=False), (48, 3, 32, 32)),
    "mlp_residual": (lambda: mlp(10, in_features=20, width=16, depth=3, residual=True), (40, 20)),
    "mixed": (_mixed_network, (40, 3, 8, 8)),
}


def _record(network, shape, seed=0):
    torch.manual_seed(seed)
    recorder = StatisticsRecorder(network.blocks())
    network(torch.randn(*shape))
    recorder.remove()
    return [recorder.statistics[block.name] for block in network.blocks()]


@pytest.mark.parametrize("name", sorted(NETWORKS))
def test_batched_matches_reference(name):
    build, shape = NETWORKS[name]
    torch.manual_seed(0)
    network = build()
    statistics = _record(network, shape)
    batched = BatchedClosedForm(network.blocks())(statistics)
    for block, stats, result in zip(network.blocks(), statistics, batched):
        expected = closed_form_curvature(block, stats)
        assert result.m_w == pytest.approx(expected.m_w, rel=1e-5), block.name
        assert result.m_z == pytest.approx(expected.m_z, rel=1e-5), block.name
        torch.testing.assert_close(result.m_w_per_unit, expected.m_w_per_unit, rtol=1e-5, atol=0.0)


def test_batched_rebuilds_on_new_shapes():
    torch.manual_seed(0)
    network = _mixed_network()
    recorder = StatisticsRecorder(network.blocks())
    batched = BatchedClosedForm(network.blocks())
    for samples in (40, 7, 40):
        network(torch.randn(samples, 3, 8, 8))
        statistics = [recorder.statistics[block.name] for block in network.blocks()]
        for block, stats, result in zip(network.blocks(), statistics, batched(statistics)):
            expected = closed_form_curvature(block, stats)
            assert result.m_w == pytest.approx(expected.m_w, rel=1e-4), (samples, block.name)
            assert result.m_z == pytest.approx(expected.m_z, rel=1e-4), (samples, block.name)
    assert batched.variances.recovered


def test_batched_rejects_missing_blocks():
    torch.manual_seed(0)
    network = _mixed_network()
    statistics = _record(network, (8, 3, 8, 8))
    with pytest.raises(ValueError, match="expected statistics for 6 blocks, got 5"):
        BatchedClosedForm(network.blocks())(statistics[:5])


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_recorder_counts_active_on_leading_samples(memory_format):
    torch.manual_seed(0)
    module = ConvBlock(2, 3, batch_norm=False, pool=True).to(memory_format=memory_format)
    network = BlockNetwork([("conv", "conv", module)])
    recorder = StatisticsRecorder(network.blocks())
    inputs = torch.randn(20, 2, 32, 32).contiguous(memory_format=memory_format)
    samples = rho_samples(20, 32 * 32)
    with torch.no_grad():
        expected = (module(inputs[:samples]) > 0).sum(dim=(0, 2, 3)).float()
    network(inputs)
    stats = recorder.statistics["conv"]
    assert samples == RHO_MIN_SAMPLES
    assert stats.counted_positions == samples * 32 * 32
    torch.testing.assert_close(stats.active, expected)


def test_rho_samples_cover_small_outputs():
    assert rho_samples(128, 2 * 2) == 128
    assert rho_samples(128, 8 * 8) * 8 * 8 >= RHO_POSITIONS
    assert rho_samples(3, 32 * 32) == 3


def test_recorder_ignores_eval_and_no_grad_passes():
    torch.manual_seed(0)
    network = vgg13(10, width=0.125)
    recorder = StatisticsRecorder(network.blocks())
    network(torch.randn(4, 3, 32, 32))
    recorded = recorder.statistics["conv3"]
    with torch.no_grad():
        network(torch.randn(6, 3, 32, 32))
    network.eval()
    network(torch.randn(6, 3, 32, 32))
    assert recorder.statistics["conv3"] is recorded


def test_batched_follows_residual_scale():
    torch.manual_seed(0)
    network = _mixed_network()
    recorder = StatisticsRecorder(network.blocks())
    batched = BatchedClosedForm(network.blocks())
    for scale in (0.5, 0.1):
        network.layers[4].scale = scale
        network(torch.randn(16, 3, 8, 8))
        statistics = [recorder.statistics[block.name] for block in network.blocks()]
        result = batched(statistics)[4]
        expected = closed_form_curvature(network.blocks()[4], statistics[4])
        assert result.m_w == pytest.approx(expected.m_w, rel=1e-5), scale
        assert result.m_z == pytest.approx(expected.m_z, rel=1e-5), scale


def test_batched_without_affine_batch_norm():
    torch.manual_seed(0)
    block = ConvBlock(3, 4, batch_norm=True, pool=True)
    block.batch_norm = nn.BatchNorm2d(4, affine=False)
    network = BlockNetwork([("conv", "conv", block), ("fc", "linear", LinearBlock(4 * 4 * 4, 5, relu=False, flatten=True))])
    statistics = _record(network, (16, 3, 8, 8))
    result = BatchedClosedForm(network.blocks())(statistics)[0]
    expected = closed_form_curvature(network.blocks()[0], statistics[0])
    assert result.m_w == pytest.approx(expected.m_w, rel=1e-5)
    assert result.m_z == pytest.approx(expected.m_z, rel=1e-5)


def test_recorder_ignores_deep_copies():
    torch.manual_seed(0)
    network = vgg13(10, width=0.125)
    recorder = StatisticsRecorder(network.blocks())
    network(torch.randn(8, 3, 32, 32))
    recorded = recorder.statistics["conv1"]
    measure_closed_form(network.blocks()[0], torch.randn(3, 3, 32, 32))
    assert recorder.statistics["conv1"] is recorded


@pytest.mark.parametrize("option", [{"groups": 2}, {"padding_mode": "circular"}, {"padding": "same"}])
def test_recorder_rejects_unsupported_conv(option):
    module = ConvBlock(4, 6, batch_norm=False, pool=False)
    module.layer = nn.Conv2d(4, 6, kernel_size=3, **{"padding": 1, **option})
    network = BlockNetwork([("conv", "conv", module)])
    with pytest.raises(ValueError, match="block 'conv'"):
        StatisticsRecorder(network.blocks())
