import copy
import math
import io

import pytest
import torch
from torch import nn

from backmatch.models import mlp, vgg13
from backmatch.models.blocks import BlockNetwork, ConvBlock, LinearBlock
from backmatch.optim.curvature import Curvature
from backmatch.optim.scale_amended import ScaleAmendedSGD
from backmatch.settings import ScaleAmendedOptions


def _constant_curvature(m_w: dict[str, float], m_z: dict[str, float]):
    def curvature(block, statistics):
        units = block.weight.shape[0]
        return Curvature(m_w=m_w[block.name], m_z=m_z[block.name], m_w_per_unit=torch.full((units,), m_w[block.name]))

    return curvature


def _step(model, optimizer, inputs, targets):
    optimizer.zero_grad()
    loss = nn.functional.cross_entropy(model(inputs), targets)
    loss.backward()
    optimizer.step()


def _data(seed=0, n=32, shape=(3, 8, 8), classes=10):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, *shape, generator=generator), torch.randint(0, classes, (n,), generator=generator)


def test_equals_sgd_when_every_m_is_one():
    torch.manual_seed(0)
    model = mlp(10, in_features=3 * 8 * 8, width=16, depth=2)
    reference = copy.deepcopy(model)
    names = [block.name for block in model.blocks()]
    ones = {name: 1.0 for name in names}
    amended = ScaleAmendedSGD(model, lr=0.1, momentum=0.9, weight_decay=5e-4, curvature=_constant_curvature(ones, ones))
    sgd = torch.optim.SGD(reference.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    for seed in range(5):
        inputs, targets = _data(seed)
        _step(model, amended, inputs, targets)
        _step(reference, sgd, inputs, targets)
    for (name, value), expected in zip(model.named_parameters(), reference.parameters()):
        assert torch.equal(value, expected), name


def _three_blocks():
    torch.manual_seed(0)
    return BlockNetwork([
        ("a", "linear", LinearBlock(4, 5, relu=True, flatten=True)),
        ("b", "linear", LinearBlock(5, 5, relu=True)),
        ("c", "linear", LinearBlock(5, 3, relu=False)),
    ])


@pytest.mark.parametrize("normalize,expected_a,expected_b", [("none", 1 / 8, 1 / 16), ("median", 4 / 3, 2 / 3)])
def test_full_rule_on_three_blocks(normalize, expected_a, expected_b):
    # c_c = 1; factor_b = (1 / m_z,c) / m_W,b = (1/4) / 4; factor_a = (1/4)(1/2) / m_W,a = 1/8.
    m_w = {"a": 1.0, "b": 4.0, "c": 8.0}
    m_z = {"a": 0.5, "b": 2.0, "c": 4.0}
    model = _three_blocks()
    options = ScaleAmendedOptions(normalize=normalize)
    optimizer = ScaleAmendedSGD(model, lr=0.1, momentum=0.0, weight_decay=0.0, options=options, curvature=_constant_curvature(m_w, m_z))
    before = {block.name: block.weight.detach().clone() for block in model.blocks()}
    inputs, targets = torch.randn(16, 4), torch.randint(0, 3, (16,))
    optimizer.zero_grad()
    nn.functional.cross_entropy(model(inputs), targets).backward()
    grads = {block.name: block.weight.grad.clone() for block in model.blocks()}
    optimizer.step()

    expected = {"a": expected_a, "b": expected_b, "c": 1.0}
    for block in model.blocks():
        assert optimizer.last_record[block.name]["factor"] == pytest.approx(expected[block.name]), block.name
        step = before[block.name] - block.weight.detach()
        assert torch.allclose(step, 0.1 * expected[block.name] * grads[block.name], atol=1e-7), block.name


def test_local_rule_ignores_blocks_above():
    m_w = {"a": 2.0, "b": 4.0, "c": 8.0}
    m_z = {"a": 9.0, "b": 9.0, "c": 9.0}
    model = _three_blocks()
    options = ScaleAmendedOptions(rule="local", normalize="none")
    optimizer = ScaleAmendedSGD(model, lr=0.1, momentum=0.0, weight_decay=0.0, options=options, curvature=_constant_curvature(m_w, m_z))
    inputs, targets = torch.randn(16, 4), torch.randint(0, 3, (16,))
    _step(model, optimizer, inputs, targets)
    assert optimizer.last_record["a"]["factor"] == pytest.approx(0.5)
    assert optimizer.last_record["b"]["factor"] == pytest.approx(0.25)


def test_clip_fires_and_is_recorded():
    m_w = {"a": 1e-6, "b": 1.0, "c": 1.0}
    m_z = {"a": 1.0, "b": 1.0, "c": 1.0}
    model = _three_blocks()
    options = ScaleAmendedOptions(normalize="none")
    optimizer = ScaleAmendedSGD(model, lr=0.1, options=options, curvature=_constant_curvature(m_w, m_z))
    _step(model, optimizer, torch.randn(16, 4), torch.randint(0, 3, (16,)))
    assert optimizer.last_record["a"]["factor"] == pytest.approx(100.0)
    assert optimizer.last_record["a"]["clipped"] is True
    assert optimizer.last_record["b"]["clipped"] is False


def test_ema_smooths_curvature():
    values = iter([1.0, 3.0])
    model = _three_blocks()

    def curvature(block, statistics):
        value = next(values) if block.name == "a" else 1.0
        return Curvature(m_w=value, m_z=1.0, m_w_per_unit=torch.full((block.weight.shape[0],), value))

    def varying(block, statistics):
        return curvature(block, statistics)

    options = ScaleAmendedOptions(normalize="none", ema=0.9)
    optimizer = ScaleAmendedSGD(model, lr=0.1, options=options, curvature=varying)
    for _ in range(2):
        _step(model, optimizer, torch.randn(16, 4), torch.randint(0, 3, (16,)))
    assert optimizer.last_record["a"]["m_w"] == pytest.approx(0.9 * 1.0 + 0.1 * 3.0)


def _bn_network():
    torch.manual_seed(0)
    return BlockNetwork([
        ("conv1", "conv", ConvBlock(3, 4, batch_norm=True, pool=False)),
        ("conv2", "conv", ConvBlock(4, 4, batch_norm=True, pool=True)),
        ("conv3", "conv", ConvBlock(4, 4, batch_norm=True, pool=True)),
        ("fc", "linear", LinearBlock(4 * 2 * 2, 10, relu=False, flatten=True)),
    ])


def _relative_update(optimizer_factory, scale: float) -> float:
    model = _bn_network()
    block = model.blocks()[1]
    with torch.no_grad():
        block.weight.mul_(scale)
    optimizer = optimizer_factory(model)
    inputs, targets = _data(seed=1, n=32, shape=(3, 8, 8))
    before = block.weight.detach().clone()
    _step(model, optimizer, inputs, targets)
    return float((block.weight.detach() - before).norm() / before.norm())


def test_bn_update_scale_invariant_amended():
    # Without normalisation the raw factors are far below the default clip range.
    options = ScaleAmendedOptions(normalize="none", clip_min=1e-9, clip_max=1e9)

    def factory(model):
        return ScaleAmendedSGD(model, lr=0.1, momentum=0.0, weight_decay=0.0, options=options)

    assert _relative_update(factory, 4.0) == pytest.approx(_relative_update(factory, 1.0), rel=1e-4)


def test_bn_update_scale_dependent_sgd():
    def factory(model):
        return torch.optim.SGD(model.parameters(), lr=0.1)

    ratio = _relative_update(factory, 1.0) / _relative_update(factory, 4.0)
    assert ratio == pytest.approx(16.0, rel=1e-3)


def test_state_dict_round_trip():
    model = vgg13(10, width=0.0625)
    optimizer = ScaleAmendedSGD(model, lr=0.1)
    inputs, targets = _data(seed=0, n=8, shape=(3, 32, 32))
    _step(model, optimizer, inputs, targets)

    clone = copy.deepcopy(model)
    restored = ScaleAmendedSGD(clone, lr=0.1)
    # Through bytes, as from a checkpoint file: a state dict shares its tensors.
    buffer = io.BytesIO()
    torch.save(optimizer.state_dict(), buffer)
    buffer.seek(0)
    restored.load_state_dict(torch.load(buffer, weights_only=False))
    for group, other in zip(optimizer.param_groups, restored.param_groups):
        assert group["m_w"] == other["m_w"]
        assert group["m_z"] == other["m_z"]

    inputs, targets = _data(seed=5, n=8, shape=(3, 32, 32))
    _step(model, optimizer, inputs, targets)
    _step(clone, restored, inputs, targets)
    for value, expected in zip(clone.parameters(), model.parameters()):
        assert torch.equal(value, expected)


def test_step_without_forward_raises():
    model = _three_blocks()
    optimizer = ScaleAmendedSGD(model, lr=0.1)
    with pytest.raises(RuntimeError, match="no batch statistics"):
        optimizer.step()


def test_max_scalar_needs_numerical_estimator():
    with pytest.raises(ValueError, match="numerical"):
        ScaleAmendedSGD(_three_blocks(), lr=0.1, options=ScaleAmendedOptions(scalar="max"))


@pytest.mark.parametrize("scalar", ["mean", "max"])
def test_numerical_estimator_steps(scalar):
    model = _three_blocks()
    options = ScaleAmendedOptions(estimator="numerical", scalar=scalar, probes=8)
    optimizer = ScaleAmendedSGD(model, lr=0.1, options=options)
    _step(model, optimizer, torch.randn(16, 4), torch.randint(0, 3, (16,)))
    for name in ("a", "b", "c"):
        assert optimizer.last_record[name]["m_w"] > 0


def test_per_channel_rates_follow_units():
    m_w = {"a": 1.0, "b": 1.0, "c": 1.0}
    m_z = {"a": 1.0, "b": 1.0, "c": 1.0}
    model = _three_blocks()

    def curvature(block, statistics):
        units = block.weight.shape[0]
        per_unit = torch.arange(1, units + 1, dtype=torch.float32)
        return Curvature(m_w=float(per_unit.mean()), m_z=m_z[block.name], m_w_per_unit=per_unit)

    options = ScaleAmendedOptions(per_channel=True, normalize="none")
    optimizer = ScaleAmendedSGD(model, lr=0.1, momentum=0.0, weight_decay=0.0, options=options, curvature=curvature)
    block = model.blocks()[0]
    before = block.weight.detach().clone()
    optimizer.zero_grad()
    nn.functional.cross_entropy(model(torch.randn(16, 4)), torch.randint(0, 3, (16,))).backward()
    grad = block.weight.grad.clone()
    optimizer.step()
    expected = 0.1 * grad / torch.arange(1, 6, dtype=torch.float32).view(-1, 1)
    assert torch.allclose(before - block.weight.detach(), expected, atol=1e-7)
    del m_w


def test_steps_under_bf16_autocast():
    torch.manual_seed(0)
    model = vgg13(10, width=0.0625).to(memory_format=torch.channels_last)
    optimizer = ScaleAmendedSGD(model, lr=0.05)
    for seed in range(3):
        inputs, targets = _data(seed=seed, n=8, shape=(3, 32, 32))
        optimizer.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = nn.functional.cross_entropy(model(inputs.contiguous(memory_format=torch.channels_last)), targets)
        loss.backward()
        optimizer.step()
    assert optimizer._batched.variances.recovered
    for name, record in optimizer.last_record.items():
        assert math.isfinite(record["m_w"]), name
        assert record["m_w"] > 0, name
        assert math.isfinite(record["m_z"]), name
        assert record["m_z"] > 0, name
