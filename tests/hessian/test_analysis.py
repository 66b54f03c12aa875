"""Per-block records, method choice and model analysis."""

import json

import pytest
import torch

from backmatch.hessian.analysis import AnalysisOptions, analyse_block, analyse_model, choose_method
from backmatch.models import mlp, vgg13

SUMMARY_KEYS = {
    "dim",
    "method",
    "exact",
    "lambda_max",
    "lambda_min",
    "condition_number",
    "mean_eigenvalue",
    "null_dim",
    "null_reasons",
    "lanczos_lambda_max",
    "hutchinson_mean",
    "seconds",
    "estimator_seconds",
    "note",
}
RECORD_KEYS = {
    "block",
    "index",
    "kind",
    "bn",
    "relu",
    "pool",
    "bn_mode",
    "weight_norm",
    "H_W",
    "H_z",
    "closed_form",
    "jg_norm",
}


@pytest.mark.parametrize(
    "dim, available, expected",
    [
        (10, ("structured",), "structured"),
        (10, ("patch_factor",), "dense"),
        (5000, ("structured",), "structured"),
        (5000, ("patch_factor",), "patch_factor"),
        (5000, (), "lanczos"),
    ],
)
def test_automatic_method(dim, available, expected):
    method, note = choose_method(dim, available, AnalysisOptions())

    assert method == expected
    assert note is None


def test_forced_method_falls_back_with_note():
    method, note = choose_method(5000, ("patch_factor",), AnalysisOptions(method="structured"))

    assert method == "patch_factor"
    assert "structured does not apply" in note


def test_invalid_option_is_rejected():
    with pytest.raises(ValueError, match="bn_mode 'test'"):
        AnalysisOptions(bn_mode="test")


def test_block_record_fields(case):
    block, inputs = case("conv_bn_relu_pool")
    record = analyse_block(block, inputs, 0, AnalysisOptions(probes=4))

    assert set(record) == RECORD_KEYS
    assert set(record["H_W"]) == SUMMARY_KEYS
    assert set(record["H_z"]) == SUMMARY_KEYS
    assert record["bn_mode"] == "train"
    assert record["jg_norm"] is None
    # By default Lanczos runs only where the spectrum is not exact.
    for matrix in ("H_W", "H_z"):
        assert (record[matrix]["lanczos_lambda_max"] is None) == record[matrix]["exact"], matrix
    json.dumps(record, allow_nan=False)


def test_lanczos_always_checks_exact_spectra(case):
    block, inputs = case("conv_bn_relu_pool")
    record = analyse_block(block, inputs, 0, AnalysisOptions(probes=4, lanczos="always"))

    assert abs(record["H_W"]["lanczos_lambda_max"] / record["H_W"]["lambda_max"] - 1) < 1e-5


def test_methods_follow_dense_limit(case):
    block, inputs = case("conv_bn_relu_pool")
    record = analyse_block(block, inputs, 0, AnalysisOptions(dense_max_dim=10, estimators=False))

    assert record["H_W"]["method"] == "structured"
    assert record["H_z"]["method"] == "patch_factor"
    assert record["H_W"]["lanczos_lambda_max"] is None


def test_lanczos_only_has_no_condition_number(case):
    block, inputs = case("residual")
    record = analyse_block(block, inputs, 0, AnalysisOptions(method="lanczos", probes=2))
    summary = record["H_z"]

    assert summary["method"] == "lanczos"
    assert summary["condition_number"] is None
    assert summary["lambda_max"] == summary["lanczos_lambda_max"]
    assert "not estimated" in summary["note"]


def test_residual_records_have_jacobian_norm():
    torch.manual_seed(0)
    model = mlp(3, in_features=6, width=4, depth=2, residual=True, branch_scale=0.5)
    records = analyse_model(model, torch.randn(5, 6), AnalysisOptions(probes=2))

    assert [record["jg_norm"] is not None for record in records] == [False, True, True, False]
    assert all(record["H_z"]["method"] == "structured" for record in records)


def test_structured_and_dense_records_agree():
    torch.manual_seed(0)
    model = vgg13(10, width=1 / 64)
    images = torch.randn(2, 3, 32, 32)
    dense = analyse_model(model, images, AnalysisOptions(method="dense", estimators=False))
    structured = analyse_model(model, images, AnalysisOptions(estimators=False))

    for left, right in zip(dense, structured):
        assert left["H_W"]["method"] == "dense"
        assert right["H_W"]["method"] == "structured"
        assert abs(left["H_W"]["condition_number"] / right["H_W"]["condition_number"] - 1) < 1e-6
        assert left["H_W"]["null_reasons"] == right["H_W"]["null_reasons"]


def test_analysis_leaves_model_unchanged():
    torch.manual_seed(0)
    model = vgg13(10, width=1 / 64)
    state = {name: value.clone() for name, value in model.state_dict().items()}
    analyse_model(model, torch.randn(2, 3, 32, 32), AnalysisOptions(dense_max_dim=0, estimators=False))

    assert all(torch.equal(state[name], value) for name, value in model.state_dict().items())


def test_eval_mode_is_recorded():
    torch.manual_seed(0)
    model = vgg13(10, width=1 / 64)
    records = analyse_model(model, torch.randn(2, 3, 32, 32), AnalysisOptions(bn_mode="eval", dense_max_dim=0, estimators=False))

    assert {record["bn_mode"] for record in records} == {"eval"}
    assert all("bn scale invariance" not in record["H_W"]["null_reasons"] for record in records)
