"""Conda environments and profiles: pinned, consistent with the tested stack, and accepted by Snakemake."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
ENV_FILES = sorted((REPO / "workflow" / "envs").glob("*.yaml"))


def _constraints() -> dict[str, str]:
    pins = {}
    for line in (REPO / "requirements" / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, version = line.split("==")
            pins[name.lower().replace("_", "-")] = version
    return pins


def test_every_rule_env_exists():
    referenced = set()
    for rule_file in (REPO / "workflow" / "rules").glob("*.smk"):
        referenced |= set(re.findall(r'"\.\./envs/([\w.-]+\.yaml)"', rule_file.read_text()))
    assert referenced
    assert referenced <= {path.name for path in ENV_FILES}


@pytest.mark.parametrize("path", ENV_FILES, ids=lambda path: path.name)
def test_env_pins_match_tested_stack(path):
    env = yaml.safe_load(path.read_text())
    pins = _constraints()
    assert "conda-forge" in env["channels"]
    conda = [entry for entry in env["dependencies"] if isinstance(entry, str)]
    pip = next(entry["pip"] for entry in env["dependencies"] if isinstance(entry, dict))
    assert all(re.fullmatch(r"[\w.-]+=[\d.]+", entry) for entry in conda), conda
    assert "python=3.11" in conda
    for requirement in pip:
        name, separator, version = requirement.partition("==")
        assert separator, f"{requirement} is not pinned with =="
        assert pins.get(name.lower()) == version, f"{name}: {version} here, {pins.get(name.lower())} in constraints.txt"


def test_slurm_profile_plans_paper_dag():
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "--workflow-profile", "profiles/slurm", "--dry-run", "--quiet", "rules",
         "--configfile", "config/paper.yaml", "--directory", str(REPO)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert re.search(r"^train\s+40$", result.stdout, flags=re.MULTILINE)
