"""``backmatch hessian`` end to end on real CIFAR-10 test images."""

import json

import pytest

from backmatch.cli import main
from backmatch.models import build_model
from backmatch.settings import TrainSettings
from backmatch.training.checkpoint import save_checkpoint

TOP_KEYS = {"provenance", "status", "checkpoint", "epoch", "settings", "analysis", "blocks"}
ANALYSIS_KEYS = {"samples", "dtype", "bn_mode", "dense_max_dim", "probes", "rtol", "sample_selection"}


def run_hessian(*flags: str) -> int:
    return main(["hessian", *flags])


def test_fresh_vgg_writes_every_block(data_dir, tmp_path):
    out = tmp_path / "nested" / "vgg.json"
    code = run_hessian(
        "--model", "vgg13", "--width", "0.0625", "--seed", "0", "--data-dir", str(data_dir),
        "--samples", "4", "--no-estimators", "--out", str(out),
    )
    result = json.loads(out.read_text())

    assert code == 0
    assert set(result) == TOP_KEYS
    assert ANALYSIS_KEYS <= set(result["analysis"])
    assert result["analysis"]["dtype"] == "float64"
    assert result["checkpoint"] is None
    assert result["epoch"] == 0
    assert [block["block"] for block in result["blocks"]] == [f"conv{i}" for i in range(1, 11)] + ["fc"]
    assert all(block["bn_mode"] == "train" for block in result["blocks"])
    assert all(block["H_W"]["method"] in ("dense", "structured") for block in result["blocks"])
    assert result["blocks"][0]["H_z"]["method"] == "patch_factor"


def test_fresh_residual_mlp_has_estimates(data_dir, tmp_path):
    out = tmp_path / "mlp.json"
    run_hessian(
        "--model", "mlp", "--width", "8", "--depth", "1", "--residual", "--branch-scale", "0.5", "--seed", "1",
        "--data-dir", str(data_dir), "--samples", "12", "--probes", "4", "--lanczos", "always", "--out", str(out),
    )
    result = json.loads(out.read_text())
    blocks = result["blocks"]

    assert result["settings"]["residual"] is True
    assert result["provenance"]["seed"] == 1
    assert blocks[1]["kind"] == "residual"
    assert blocks[1]["jg_norm"] > 0
    assert all(block["H_W"]["hutchinson_mean"] > 0 for block in blocks)
    assert all(block["H_z"]["lanczos_lambda_max"] > 0 for block in blocks)
    assert all(set(block["closed_form"]) == {"m_w", "m_z"} for block in blocks)


def test_checkpoint_epoch_is_recorded(data_dir, tmp_path):
    settings = TrainSettings(model="mlp", width=6, depth=1, epochs=5)
    model = build_model(settings, 10)
    checkpoint = tmp_path / "epoch3.pt"
    save_checkpoint(checkpoint, {"settings": settings.to_dict(), "model": model.state_dict(), "epoch": 3})
    out = tmp_path / "ckpt.json"
    run_hessian("--checkpoint", str(checkpoint), "--data-dir", str(data_dir), "--samples", "6", "--no-estimators", "--out", str(out))
    result = json.loads(out.read_text())

    assert result["epoch"] == 3
    assert result["checkpoint"] == str(checkpoint)
    assert result["settings"]["width"] == 6


def test_checkpoint_with_model_flags_is_rejected(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_hessian("--checkpoint", str(tmp_path / "a.pt"), "--model", "mlp", "--out", str(tmp_path / "x.json"))

    assert exit_info.value.code == 2
    assert "--model describe a fresh network" in capsys.readouterr().err


def test_missing_checkpoint_is_rejected(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_hessian("--checkpoint", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "x.json"))

    assert exit_info.value.code == 2
    assert "missing.pt not found" in capsys.readouterr().err


def test_network_is_required(tmp_path, capsys):
    with pytest.raises(SystemExit):
        run_hessian("--out", str(tmp_path / "x.json"))

    assert "pass --checkpoint FILE, or --model" in capsys.readouterr().err


def test_diverged_marker_gives_empty_record(data_dir, tmp_path):
    settings = TrainSettings(model="mlp", width=8, depth=1, data_dir=str(data_dir))
    marker = tmp_path / "epoch_003.pt"
    save_checkpoint(marker, {"settings": settings.to_dict(), "epoch": 3, "status": "diverged", "model": None})
    out = tmp_path / "diverged.json"

    code = run_hessian("--checkpoint", str(marker), "--out", str(out))
    result = json.loads(out.read_text())

    assert code == 0
    assert result["status"] == "diverged"
    assert result["epoch"] == 3
    assert result["blocks"] == []
