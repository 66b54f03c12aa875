"""Batch variances recovered from running variances against recomputed ones."""

import pytest
import torch
from torch import nn

from backmatch.models import vgg13
from backmatch.models.blocks import BlockNetwork, ConvBlock, LinearBlock
from backmatch.optim.batch_variance import BatchVariances
from backmatch.optim.statistics import StatisticsRecorder, batch_variance


def _network():
    torch.manual_seed(0)
    return vgg13(10, width=0.125)


def _expected(network, statistics):
    """The variance of each unit recomputed from the recorded inputs, or 1 without batch norm."""
    parts = []
    for block in network.blocks():
        stats = statistics[block.name]
        if block.batch_norm is None:
            parts.append(torch.ones(block.weight.shape[0]))
        else:
            parts.append(batch_variance(block, stats) + block.batch_norm.eps)
    return torch.cat(parts)


def _watch(network):
    """Return a statistics recorder and a variance tracker for the blocks of ``network``."""
    return StatisticsRecorder(network.blocks()), BatchVariances(network.blocks())


def _forward(network, recorder, seed):
    generator = torch.Generator().manual_seed(seed)
    network(torch.randn(16, 3, 32, 32, generator=generator))
    return [recorder.statistics[block.name] for block in network.blocks()]


def test_first_call_recomputes():
    network = _network()
    recorder, variances = _watch(network)
    values = variances(_forward(network, recorder, 0))
    assert not variances.recovered
    torch.testing.assert_close(values, _expected(network, recorder.statistics), rtol=0, atol=0)


def test_next_steps_recover_from_running_variance():
    network = _network()
    recorder, variances = _watch(network)
    for seed in range(4):
        values = variances(_forward(network, recorder, seed))
        torch.testing.assert_close(values, _expected(network, recorder.statistics), rtol=1e-4, atol=1e-7)
    assert variances.recovered


def test_extra_training_forward_falls_back():
    network = _network()
    recorder, variances = _watch(network)
    variances(_forward(network, recorder, 0))
    statistics = _forward(network, recorder, 1)
    with torch.no_grad():
        # A training-mode pass without gradients updates the running statistics
        # but records nothing.
        network(torch.randn(16, 3, 32, 32))
    values = variances(statistics)
    assert not variances.recovered
    torch.testing.assert_close(values, _expected(network, recorder.statistics), rtol=0, atol=0)


def test_gradient_accumulation_falls_back():
    network = _network()
    recorder, variances = _watch(network)
    variances(_forward(network, recorder, 0))
    _forward(network, recorder, 1)
    values = variances(_forward(network, recorder, 2))
    assert not variances.recovered
    torch.testing.assert_close(values, _expected(network, recorder.statistics), rtol=0, atol=0)


def test_loaded_state_falls_back_until_snapshot():
    network = _network()
    recorder, variances = _watch(network)
    variances(_forward(network, recorder, 0))
    network.load_state_dict(_network().state_dict())
    variances(_forward(network, recorder, 1))
    assert not variances.recovered

    network.load_state_dict(_network().state_dict())
    variances.take_snapshot()
    values = variances(_forward(network, recorder, 2))
    assert variances.recovered
    torch.testing.assert_close(values, _expected(network, recorder.statistics), rtol=1e-4, atol=1e-7)


def test_batch_norm_without_running_stats():
    torch.manual_seed(0)
    block = ConvBlock(3, 4, batch_norm=True, pool=True)
    block.batch_norm = nn.BatchNorm2d(4, track_running_stats=False)
    network = BlockNetwork([("conv", "conv", block), ("fc", "linear", LinearBlock(4 * 16 * 16, 10, relu=False, flatten=True))])
    recorder, variances = _watch(network)
    for seed in range(2):
        values = variances(_forward(network, recorder, seed))
        torch.testing.assert_close(values, _expected(network, recorder.statistics), rtol=0, atol=0)


def test_assigned_state_falls_back():
    network, source = _network(), _network()
    recorder, variances = _watch(network)
    _forward(source, StatisticsRecorder(source.blocks()), 5)
    variances(_forward(network, recorder, 0))
    # The loaded buffers bring their own version counters, one update ahead.
    network.load_state_dict(source.state_dict(), assign=True)
    values = variances(_forward(network, recorder, 1))
    assert not variances.recovered
    torch.testing.assert_close(values, _expected(network, recorder.statistics), rtol=0, atol=0)


def test_imprecise_recovery_falls_back():
    network = _network()
    for block in network.blocks():
        if block.batch_norm is not None:
            block.batch_norm.momentum = 0.01
    recorder, variances = _watch(network)
    for seed in range(2):
        generator = torch.Generator().manual_seed(seed)
        # Tiny inputs give conv1 a batch variance far below its running variance of 1.
        network(1e-3 * torch.randn(16, 3, 32, 32, generator=generator))
        values = variances([recorder.statistics[block.name] for block in network.blocks()])
    assert not variances.recovered
    torch.testing.assert_close(values, _expected(network, recorder.statistics), rtol=0, atol=0)


@pytest.mark.parametrize("momentum", [None, 0.0])
def test_momentum_without_recovery(momentum):
    network = _network()
    for block in network.blocks():
        if block.batch_norm is not None:
            block.batch_norm.momentum = momentum
    recorder, variances = _watch(network)
    for seed in range(2):
        values = variances(_forward(network, recorder, seed))
        assert not variances.recovered
        torch.testing.assert_close(values, _expected(network, recorder.statistics), rtol=0, atol=0)


def test_batch_norm_in_eval_mode_rejected():
    network = _network()
    recorder, variances = _watch(network)
    statistics = _forward(network, recorder, 0)
    network.blocks()[2].batch_norm.eval()
    with pytest.raises(ValueError, match="batch norm of block 'conv3' is in eval mode"):
        variances(statistics)
