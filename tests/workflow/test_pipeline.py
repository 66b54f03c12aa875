"""The Snakemake workflow end to end on the smoke config, in a copy of the repository.

One smoke run builds the report; the other tests ask Snakemake's own dry run
which jobs an edit or another config would start.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from pypdf import PdfReader

pytestmark = pytest.mark.slow

IGNORED = (".git", ".venv", "results", "logs", ".snakemake", "resources", "__pycache__", ".pytest_cache", "*.egg-info", "benchmarks")
OUTPUT_IDS = ["T1", "F1", "F2", "F3", "F4", "F5", "T2", "F6", "T3"]


def _copy_repository(repo_root: Path, target: Path, data_dir: Path) -> Path:
    shutil.copytree(repo_root, target, ignore=shutil.ignore_patterns(*IGNORED))
    (target / "resources").symlink_to(data_dir.resolve())
    return target


def _snakemake(root: Path, *args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "snakemake", *args], cwd=root, capture_output=True, text=True, timeout=timeout,
    )


def _dry_run(root: Path, configfile: str, *targets: str) -> dict[str, int]:
    """Return the job count per rule that a dry run lists, from Snakemake's job stats.

    Targets come first, because --quiet and --configfile take every following word as theirs.
    """
    result = _snakemake(root, *targets, "--dry-run", "--quiet", "rules", "--configfile", configfile)
    assert result.returncode == 0, result.stdout + result.stderr
    counts = {}
    for line in result.stdout.splitlines():
        match = re.fullmatch(r"(\w+)\s+(\d+)", line.strip())
        if match and match.group(1) != "total":
            counts[match.group(1)] = int(match.group(2))
    return counts


def _write_config(root: Path, name: str, change) -> str:
    config = yaml.safe_load((root / "config" / "smoke.yaml").read_text())
    change(config)
    path = root / "config" / name
    path.write_text(yaml.safe_dump(config))
    return f"config/{name}"


class _Edited:
    """Append a comment to a file for the duration of a ``with`` block, then restore it and its mtime."""

    def __init__(self, path: Path):
        self.path = path

    def __enter__(self):
        self.original = self.path.read_bytes()
        self.stat = self.path.stat()
        self.path.write_bytes(self.original + b"\n# edited by a test\n")
        return self.path

    def __exit__(self, *exc):
        self.path.write_bytes(self.original)
        os.utime(self.path, ns=(self.stat.st_atime_ns, self.stat.st_mtime_ns))


@pytest.fixture(scope="module")
def smoke(tmp_path_factory, repo_root, data_dir) -> Path:
    root = _copy_repository(repo_root, tmp_path_factory.mktemp("smoke") / "repo", data_dir)
    result = _snakemake(root, "--cores", "2", "--configfile", "config/smoke.yaml")
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-5000:]
    return root


def test_smoke_builds_report_with_every_output(smoke):
    report = smoke / "results" / "report.pdf"
    assert report.is_file()
    text = " ".join(page.extract_text() for page in PdfReader(report).pages)
    images = sum(len(page.images) for page in PdfReader(report).pages)
    data = yaml.safe_load((smoke / "results" / "report.json").read_text())
    assert [output["id"] for output in data["outputs"]] == OUTPUT_IDS
    for output in data["outputs"]:
        caption_start = " ".join(output["caption"].split()[:5])
        assert caption_start in " ".join(text.split()), output["id"]
    assert images >= 6
    assert "Provenance" in text
    for output_id in OUTPUT_IDS:
        kind = "figures" if output_id.startswith("F") else "tables"
        main = smoke / "results" / kind / (f"{output_id}.pdf" if kind == "figures" else f"{output_id}.csv")
        assert main.is_file(), output_id


def test_smoke_rerun_has_nothing_to_do(smoke):
    assert _dry_run(smoke, "config/smoke.yaml") == {}


def test_edited_notebook_reruns_only_its_figure(smoke):
    with _Edited(smoke / "notebooks" / "F4.py"):
        assert _dry_run(smoke, "config/smoke.yaml", "results/figures/F4.pdf") == {"figure": 1}
        assert _dry_run(smoke, "config/smoke.yaml", "F4") == {"figure": 1, "F4": 1}
        assert _dry_run(smoke, "config/smoke.yaml") == {"figure": 1, "report": 1, "all": 1}


def test_figure_target_needs_only_its_runs(tmp_path, repo_root, data_dir):
    root = _copy_repository(repo_root, tmp_path / "repo", data_dir)
    counts = _dry_run(root, "config/smoke.yaml", "results/figures/F4.pdf")
    # F4 reads the CIFAR-10 runs of the optimizer experiment: two optimisers, one seed.
    assert counts == {"prepare_data": 1, "train": 2, "figure": 1}


def test_changed_variant_recomputes_only_that_variant(smoke):
    def slower_gaussian(config):
        config["experiments"]["init"]["variants"]["gaussian"]["lr"] = 0.03

    configfile = _write_config(smoke, "changed.yaml", slower_gaussian)
    counts = _dry_run(smoke, configfile)
    assert counts["train"] == 1
    assert counts["hessian"] == 2
    assert counts["figure"] == 1
    assert "backmatching" not in counts
    assert "table" not in counts


def test_other_config_reuses_shared_runs(smoke):
    def execution_only(config):
        config["scale"] = "smoke-copy"
        config["threads"] = {"train": 2, "hessian": 2, "notebook": 1}

    configfile = _write_config(smoke, "renamed.yaml", execution_only)
    counts = _dry_run(smoke, configfile)
    assert "train" not in counts
    assert "hessian" not in counts
    assert "backmatching" not in counts


def test_training_code_edit_invalidates_runs(smoke):
    with _Edited(smoke / "src" / "backmatch" / "training" / "loop.py"):
        counts = _dry_run(smoke, "config/smoke.yaml")
    assert counts["train"] == 8
    assert counts["hessian"] == 10


def test_analysis_code_edit_keeps_runs(smoke):
    with _Edited(smoke / "src" / "backmatch" / "hessian" / "structured.py"):
        counts = _dry_run(smoke, "config/smoke.yaml")
    assert "train" not in counts
    assert counts["hessian"] == 10


def test_config_error_stops_before_any_job(smoke):
    def negative_rate(config):
        config["experiments"]["init"]["variants"]["gaussian"]["lr"] = -0.02

    configfile = _write_config(smoke, "invalid.yaml", negative_rate)
    before = sorted(path.relative_to(smoke) for path in (smoke / "results").rglob("*"))
    result = _snakemake(smoke, "--cores", "1", "--configfile", configfile)
    after = sorted(path.relative_to(smoke) for path in (smoke / "results").rglob("*"))
    assert result.returncode != 0
    assert "experiments.init.variants.gaussian.lr" in result.stdout + result.stderr
    assert "Select jobs to execute" not in result.stdout + result.stderr
    assert before == after


def test_interrupted_training_resumes(smoke):
    def longer_run(config):
        config["experiments"]["optimizer"]["variants"]["sgd"]["epochs"] = 6
        config["experiments"]["optimizer"]["variants"]["sgd"]["lr_milestones"] = [6]

    configfile = _write_config(smoke, "longer.yaml", longer_run)
    runs_before = set((smoke / "results" / "runs").iterdir())
    process = subprocess.Popen(
        [sys.executable, "-m", "snakemake", "--cores", "1", "--configfile", configfile, "--until", "train"],
        cwd=smoke, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    deadline = time.monotonic() + 300
    state = None
    while time.monotonic() < deadline and state is None:
        for run in set((smoke / "results" / "runs").iterdir()) - runs_before:
            logs = smoke / "logs" / "train" / f"{run.name}.log"
            if (run / "state" / "last.pt").is_file() and logs.is_file() and "epoch 1/6" in logs.read_text():
                state = run
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGTERM)
    process.wait(timeout=120)
    assert state is not None, "no training run of the longer config reached epoch 1"
    assert not (state / "summary.json").exists()

    result = _snakemake(smoke, "--cores", "1", "--configfile", configfile, "--until", "train")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert (state / "summary.json").is_file()
    assert "resuming" in (smoke / "logs" / "train" / f"{state.name}.log").read_text()
