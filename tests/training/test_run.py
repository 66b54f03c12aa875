"""Training runs: outputs, determinism, resume after a kill, divergence."""

import json
import os
import shutil
import signal
import subprocess
import sys

import pandas as pd
import pytest
import torch

from backmatch.settings import TrainSettings
from backmatch.training.checkpoint import load_model, read_checkpoint
from backmatch.training.run import ResumeMismatchError, train

TIMING_COLUMNS = ["seconds", "images_per_second"]


def _settings(data_dir, **overrides):
    values = dict(
        dataset="cifar10", data_dir=str(data_dir), model="vgg13", width=0.0625, epochs=3, batch_size=64,
        train_subset=1024, test_subset=256, lr=0.05, checkpoint_epochs=(0, 3), threads=1, progress=False,
    )
    values.update(overrides)
    return TrainSettings(**values)


def _metrics(folder):
    return pd.read_csv(folder / "metrics.csv").drop(columns=TIMING_COLUMNS)


def _cli(*args):
    return [sys.executable, "-m", "backmatch", *args]


def test_run_writes_every_output(data_dir, tmp_path):
    settings = _settings(data_dir, epochs=2, checkpoint_epochs=(0, 2), optimizer="sa-sgd")
    summary = train(settings, tmp_path)
    metrics = pd.read_csv(tmp_path / "metrics.csv")
    blocks = pd.read_csv(tmp_path / "blocks.csv")
    assert summary["status"] == "completed"
    assert list(metrics["epoch"]) == [1, 2]
    assert set(blocks["epoch"]) == {0, 1, 2}
    assert blocks.loc[blocks["epoch"] == 0, "sa_factor"].isna().all()
    assert blocks.loc[blocks["epoch"] == 2, "sa_factor"].notna().all()
    assert (tmp_path / "state" / "last.pt").is_file()
    written = json.loads((tmp_path / "summary.json").read_text())
    assert written["provenance"]["versions"]["torch"] is not None
    assert written["provenance"]["seed"] == 0
    assert "commit" in written["provenance"]["git"]
    assert written["data"]["train_images"] == 1024
    for epoch in (0, 2):
        model, loaded, stored_epoch = load_model(tmp_path / "checkpoints" / f"epoch_{epoch:03d}.pt")
        assert stored_epoch == epoch
        assert loaded.identity() == settings.identity()


def test_same_seed_gives_identical_metrics(data_dir, tmp_path):
    settings = _settings(data_dir, epochs=2, checkpoint_epochs=())
    train(settings, tmp_path / "a")
    train(settings, tmp_path / "b")
    pd.testing.assert_frame_equal(_metrics(tmp_path / "a"), _metrics(tmp_path / "b"))


def test_other_seed_gives_other_metrics(data_dir, tmp_path):
    train(_settings(data_dir, epochs=1, checkpoint_epochs=()), tmp_path / "a")
    train(_settings(data_dir, epochs=1, checkpoint_epochs=(), seed=1), tmp_path / "b")
    assert not _metrics(tmp_path / "a").equals(_metrics(tmp_path / "b"))


@pytest.mark.parametrize("optimizer", ["sgd", "sa-sgd"])
def test_killed_run_resumes_to_same_metrics(data_dir, tmp_path, optimizer):
    settings = _settings(data_dir, optimizer=optimizer)
    train(settings, tmp_path / "reference")

    out = tmp_path / "killed"
    arguments = _cli(
        "train", "--settings-json", json.dumps(settings.identity()), "--data-dir", str(data_dir),
        "--threads", "1", "--no-progress", "--out", str(out),
    )
    process = subprocess.Popen(arguments, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    for line in process.stderr:
        if "epoch 1/3:" in line:
            process.send_signal(signal.SIGKILL)
            break
    process.wait(timeout=120)
    assert process.returncode == -signal.SIGKILL
    assert not (out / "summary.json").exists()
    assert read_checkpoint(out / "state" / "last.pt")["epoch"] == 1

    resumed = subprocess.run(arguments, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stderr
    pd.testing.assert_frame_equal(_metrics(out), _metrics(tmp_path / "reference"))
    reference = torch.load(tmp_path / "reference" / "checkpoints" / "epoch_003.pt", weights_only=False)["model"]
    finished = torch.load(out / "checkpoints" / "epoch_003.pt", weights_only=False)["model"]
    for name, value in reference.items():
        assert torch.equal(finished[name], value), name


def test_resume_with_other_settings_is_rejected(data_dir, tmp_path):
    settings = _settings(data_dir, epochs=1, checkpoint_epochs=())
    state = tmp_path / "state"
    state.mkdir()
    from backmatch.training.checkpoint import save_checkpoint

    save_checkpoint(state / "last.pt", {"settings": settings.to_dict(), "epoch": 0})
    with pytest.raises(ResumeMismatchError, match="lr: 0.05 there, 0.01 now"):
        train(_settings(data_dir, epochs=1, checkpoint_epochs=(), lr=0.01), tmp_path)


def test_divergence_is_a_result(data_dir, tmp_path):
    settings = _settings(
        data_dir, model="mlp", width=32, depth=2, init="gaussian", lr=1e6, momentum=0.0, weight_decay=0.0,
        epochs=3, checkpoint_epochs=(0, 3),
    )
    result = subprocess.run(
        _cli("train", "--settings-json", json.dumps(settings.identity()), "--data-dir", str(data_dir), "--out", str(tmp_path), "--no-progress"),
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "diverged"
    assert summary["final_test_acc"] is None
    assert read_checkpoint(tmp_path / "checkpoints" / "epoch_003.pt")["status"] == "diverged"
    assert "diverged" in result.stderr


def test_cli_rejects_invalid_value(tmp_path):
    result = subprocess.run(_cli("train", "--epochs", "0", "--out", str(tmp_path)), capture_output=True, text=True)
    assert result.returncode == 2
    assert "epochs 0: must be at least 1" in result.stderr


def test_cli_rejects_invalid_settings_json(tmp_path):
    result = subprocess.run(_cli("train", "--settings-json", '{"lr": -1}', "--out", str(tmp_path)), capture_output=True, text=True)
    assert result.returncode == 2
    assert "lr -1: must be positive" in result.stderr


def test_cli_reports_missing_data(tmp_path):
    result = subprocess.run(
        _cli("train", "--data-dir", str(tmp_path / "nowhere"), "--epochs", "1", "--out", str(tmp_path / "run")),
        capture_output=True, text=True,
    )
    assert result.returncode == 1
    assert "not found" in result.stderr
    assert "backmatch data" in result.stderr


def test_finished_run_is_returned_unchanged(data_dir, tmp_path):
    settings = _settings(data_dir, epochs=1, checkpoint_epochs=(1,))
    first = train(settings, tmp_path)
    written = (tmp_path / "metrics.csv").stat().st_mtime_ns
    again = train(settings, tmp_path)
    assert again == first
    assert (tmp_path / "metrics.csv").stat().st_mtime_ns == written


def test_finished_run_with_other_settings_is_rejected(data_dir, tmp_path):
    train(_settings(data_dir, epochs=1, checkpoint_epochs=()), tmp_path)
    with pytest.raises(ResumeMismatchError, match="epochs: 1 there, 2 now"):
        train(_settings(data_dir, epochs=2, checkpoint_epochs=()), tmp_path)


def test_deleted_outputs_are_rewritten_from_state(data_dir, tmp_path):
    settings = _settings(data_dir, epochs=2, checkpoint_epochs=(0, 2))
    train(settings, tmp_path)
    reference = _metrics(tmp_path)
    # Snakemake removes the declared outputs of a job before it reruns it.
    for name in ("summary.json", "metrics.csv", "blocks.csv"):
        (tmp_path / name).unlink()
    shutil.rmtree(tmp_path / "checkpoints")
    summary = train(settings, tmp_path)
    assert summary["status"] == "completed"
    pd.testing.assert_frame_equal(_metrics(tmp_path), reference)
    assert (tmp_path / "checkpoints" / "epoch_002.pt").is_file()


def test_foreign_output_folder_is_rejected(data_dir, tmp_path):
    (tmp_path / "thesis.txt").write_text("do not overwrite")
    with pytest.raises(ValueError, match="thesis.txt"):
        train(_settings(data_dir, epochs=1, checkpoint_epochs=()), tmp_path)


def test_oversized_subset_is_rejected(data_dir, tmp_path):
    with pytest.raises(ValueError, match="train_subset 60000 exceeds the 50000 images"):
        train(_settings(data_dir, epochs=1, checkpoint_epochs=(), train_subset=60000), tmp_path)
