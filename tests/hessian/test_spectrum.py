"""The null-space rule and the spectrum summary."""

import json
import math

import pytest
import torch

from backmatch.hessian.spectrum import SpectrumSummary, default_rtol, drop_smallest, summarize_spectrum


def summarize(values, dim=None, **options):
    values = torch.tensor(values, dtype=torch.float64)
    structural = options.pop("structural", {})
    dim = dim if dim is not None else values.numel() + sum(structural.values())
    return summarize_spectrum(values, dim=dim, trace=float(values.sum()), method="dense", structural=structural, **options)


def test_condition_number_over_non_null():
    summary = summarize([0.0, 2.0, 8.0])

    assert summary.condition_number == 4.0
    assert summary.lambda_min == 2.0
    assert summary.null_reasons == {"numerical": 1}


def test_all_null_has_no_condition_number():
    summary = summarize([], dim=6, structural={"dead unit": 6})

    assert summary.condition_number is None
    assert summary.lambda_min is None
    assert summary.lambda_max == 0.0
    assert summary.null_dim == 6
    assert "All 6 directions are null" in summary.note


def test_zero_matrix_is_all_numerical_null():
    summary = summarize([0.0, 0.0, -1e-300])

    assert summary.condition_number is None
    assert summary.null_reasons == {"numerical": 3}


def test_tiny_eigenvalue_is_numerical_null():
    summary = summarize([1e-20, -1e-17, 1.0, 3.0])

    assert summary.null_reasons == {"numerical": 2}
    assert summary.condition_number == 3.0


def test_eigenvalue_above_threshold_is_kept():
    threshold = default_rtol(3) * 1.0
    summary = summarize([10 * threshold, 0.5, 1.0])

    assert summary.null_dim == 0
    assert math.isclose(summary.condition_number, 1.0 / (10 * threshold))


def test_rtol_override():
    summary = summarize([1e-3, 1.0], rtol=1e-2)

    assert summary.null_reasons == {"numerical": 1}
    assert summary.condition_number == 1.0


def test_structural_counts_must_add_up():
    with pytest.raises(ValueError, match="do not add up"):
        summarize([1.0, 2.0], dim=5, structural={"rank bound": 1})


def test_unknown_reason_is_rejected():
    with pytest.raises(ValueError, match="unknown null reasons"):
        summarize([1.0], structural={"mystery": 1})


def test_mean_uses_all_directions():
    summary = summarize([2.0, 4.0], structural={"rank bound": 2})

    assert summary.mean_eigenvalue == 1.5


def test_json_has_no_infinity():
    summary = SpectrumSummary(dim=2, method="dense", exact=True, lambda_max=math.inf, condition_number=math.nan)
    record = summary.to_json()

    assert record["lambda_max"] is None
    assert record["condition_number"] is None
    json.dumps(record, allow_nan=False)


def test_drop_smallest_per_row():
    remaining = drop_smallest(torch.tensor([[0.0, 1.0, 2.0], [0.0, 0.0, 3.0]]), torch.tensor([0, 2]))

    assert remaining.tolist() == [0.0, 1.0, 2.0, 3.0]


def test_drop_smallest_single_count():
    remaining = drop_smallest(torch.tensor([[0.0, 1.0], [0.0, 5.0]]), 1)

    assert remaining.tolist() == [1.0, 5.0]
