"""Back-matching propagation against plain gradient steps, and the exact least-squares mode."""

import pytest
import torch
from torch.func import functional_call, grad

from backmatch.backmatching.algorithm import back_matching_loss, back_matching_pass
from backmatch.backmatching.comparison import compare_with_gradient_step, random_steps
from backmatch.hessian.operators import functional_block
from backmatch.models import mlp, vgg13


def small_network(name: str):
    torch.manual_seed(0)
    if name == "mlp":
        model = mlp(3, in_features=12, width=8, depth=2)
        images = torch.randn(6, 3, 2, 2)
    elif name == "residual_mlp":
        model = mlp(3, in_features=12, width=8, depth=2, residual=True, branch_scale=0.5)
        images = torch.randn(6, 3, 2, 2)
    else:
        model = vgg13(4, width=1 / 32, batch_norm=name == "vgg13_bn")
        images = torch.randn(4, 3, 32, 32)
    labels = torch.arange(len(images)) % 3
    return model.to(torch.float64).train(), images.to(torch.float64), labels


@pytest.mark.parametrize("name", ["mlp", "residual_mlp", "vgg13_bn", "vgg13"])
@pytest.mark.parametrize("steps", ["unit", "scaled"])
def test_back_matching_equals_gradient_step(name, steps):
    model, images, labels = small_network(name)
    count = len(model.blocks())
    weight_steps, input_steps = random_steps(count, seed=3) if steps == "scaled" else (None, None)
    records = compare_with_gradient_step(model, images, labels, 0.1, weight_steps, input_steps)

    assert len(records) == count
    assert max(record["max_abs_diff"] for record in records) < 1e-10
    assert min(record["max_abs_update"] for record in records) > 1e-6


def test_scaled_steps_differ_from_unit_steps():
    model, images, labels = small_network("mlp")
    unit = back_matching_pass(model, images, labels, 0.1)
    weight_steps, input_steps = random_steps(len(model.blocks()), seed=3)
    scaled = back_matching_pass(model, images, labels, 0.1, weight_steps, input_steps)
    first = next(iter(unit.parameters[0]))

    assert not torch.allclose(unit.parameters[0][first], scaled.parameters[0][first], atol=1e-8)


def test_pass_leaves_model_unchanged():
    model, images, labels = small_network("vgg13_bn")
    state = {name: value.clone() for name, value in model.state_dict().items()}
    back_matching_pass(model, images, labels, 0.1)

    assert all(torch.equal(state[name], value) for name, value in model.state_dict().items())


def linear_network():
    torch.manual_seed(0)
    model = mlp(3, in_features=5, width=4, depth=1, relu=False).to(torch.float64).train()
    images = torch.randn(7, 5, dtype=torch.float64)
    return model, images, torch.arange(7) % 3


def test_exact_mode_zeroes_weight_gradient():
    model, images, labels = linear_network()
    result = back_matching_pass(model, images, labels, 0.5, mode="exact")

    for index, block in enumerate(model.blocks()):
        twin = functional_block(block)
        gradient = grad(back_matching_loss, argnums=1)(twin, result.parameters[index], result.activations[index], result.targets[index + 1])
        assert max(float(value.abs().max()) for value in gradient.values()) < 1e-10


def test_exact_mode_zeroes_input_gradient():
    model, images, labels = linear_network()
    result = back_matching_pass(model, images, labels, 0.5, mode="exact")

    for index, block in enumerate(model.blocks()):
        twin = functional_block(block)
        old = {name: value.detach() for name, value in twin.named_parameters()}
        gradient = grad(back_matching_loss, argnums=2)(twin, old, result.targets[index], result.targets[index + 1])
        assert float(gradient.abs().max()) < 1e-10


def test_exact_mode_matches_lstsq():
    model, images, labels = linear_network()
    result = back_matching_pass(model, images, labels, 0.5, mode="exact")
    inputs = result.activations[-2]
    design = torch.cat([inputs, torch.ones(len(inputs), 1, dtype=inputs.dtype)], dim=1)
    solution = torch.linalg.lstsq(design, result.targets[-1], driver="gelsd").solution

    assert torch.allclose(result.parameters[-1]["layer.weight"], solution[:-1].T, atol=1e-10)
    assert torch.allclose(result.parameters[-1]["layer.bias"], solution[-1], atol=1e-10)


def test_exact_input_target_has_minimum_norm():
    model, images, labels = linear_network()
    result = back_matching_pass(model, images, labels, 0.5, mode="exact")
    # fc_in maps 5 inputs to 4 units, so a minimum-norm solution lies in the row space of W.
    weight = model.blocks()[0].weight.detach()
    projector = torch.linalg.pinv(weight) @ weight
    target = result.targets[0]

    assert torch.allclose(target @ projector.T, target, atol=1e-10)


def test_exact_mode_rejects_relu_block():
    model, images, labels = small_network("mlp")

    with pytest.raises(ValueError, match="block 'fc_in' is a linear block with ReLU; use mode='gradient'"):
        back_matching_pass(model, images, labels, 0.1, mode="exact")


def test_step_count_must_match_blocks():
    model, images, labels = small_network("mlp")

    with pytest.raises(ValueError, match="weight_steps has 2 entries but the network has 4 blocks"):
        back_matching_pass(model, images, labels, 0.1, weight_steps=[1.0, 1.0])


def test_unknown_mode_is_rejected():
    model, images, labels = small_network("mlp")

    with pytest.raises(ValueError, match="mode 'newton' is unknown"):
        back_matching_pass(model, images, labels, 0.1, mode="newton")
