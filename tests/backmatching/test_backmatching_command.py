"""``backmatch backmatching`` end to end on real CIFAR-10 test images."""

import json
from pathlib import Path

import pytest

from backmatch.cli import main

DATA_DIR = Path(__file__).resolve().parents[2] / "resources"
RECORD_KEYS = {"network", "block", "kind", "steps", "max_abs_diff", "max_abs_update", "rate"}


@pytest.fixture
def data_dir() -> Path:
    if not (DATA_DIR / "cifar-10-batches-py" / "test_batch").is_file():
        pytest.skip(f"CIFAR-10 is not unpacked in {DATA_DIR}; run backmatch data --dataset cifar10 --data-dir {DATA_DIR}")
    return DATA_DIR


def test_table_records(data_dir, tmp_path):
    out = tmp_path / "t1.json"
    code = main([
        "backmatching", "--data-dir", str(data_dir), "--samples", "4", "--networks", "residual_mlp,vgg13_bn",
        "--vgg-width", "0.03125", "--out", str(out),
    ])
    result = json.loads(out.read_text())
    records = result["records"]

    assert code == 0
    assert set(result) == {"provenance", "settings", "records"}
    assert result["settings"]["networks"] == ["residual_mlp", "vgg13_bn"]
    assert all(set(record) == RECORD_KEYS for record in records)
    assert {(record["network"], record["steps"]) for record in records} == {
        (network, steps) for network in ("residual_mlp", "vgg13_bn") for steps in ("unit", "scaled")
    }
    assert len(records) == 2 * 6 + 2 * 11
    assert max(record["max_abs_diff"] for record in records) < 1e-10


def test_unknown_network_is_rejected(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["backmatching", "--networks", "resnet", "--out", str(tmp_path / "x.json")])

    assert "comma-separated subset of mlp, residual_mlp, vgg13_bn, vgg13" in capsys.readouterr().err
