"""The study plan: cache keys, shared runs, figure inputs and config checks, without Snakemake."""

import copy
import shutil
from pathlib import Path

import pytest
import yaml

from backmatch.plan import OUTPUTS, PlanError, build_plan, code_digest, config_problems, import_closure

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def smoke_config():
    return yaml.safe_load((REPO / "config" / "smoke.yaml").read_text())


@pytest.fixture
def schema():
    return yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())


def test_every_shipped_config_is_valid(schema):
    for path in sorted((REPO / "config").glob("*.yaml")):
        config = yaml.safe_load(path.read_text())
        assert config_problems(config, schema) == [], path.name
        plan = build_plan(config, REPO / "src")
        assert plan.runs, path.name


def test_identical_variants_share_one_run(smoke_config):
    plan = build_plan(smoke_config, REPO / "src")
    cells = len(plan.members)
    # In the smoke config, init.gaussian equals residual.plain, and batchnorm.bn
    # equals optimizer.sgd on CIFAR-10: two runs serve two cells each.
    assert len(plan.runs) == cells - 2
    shared = sorted(sorted(run.members) for run in plan.runs.values() if len(run.members) == 2)
    assert shared == [[("batchnorm", "bn"), ("optimizer", "sgd")], [("init", "gaussian"), ("residual", "plain")]]
    assert all(run.checkpoint_epochs == (0, 2) for run in plan.runs.values() if len(run.members) == 2)


def test_changed_variant_changes_only_its_keys(smoke_config):
    before = build_plan(smoke_config, REPO / "src")
    changed = copy.deepcopy(smoke_config)
    changed["experiments"]["init"]["variants"]["gaussian"]["lr"] = 0.03
    after = build_plan(changed, REPO / "src")
    # The old run stays, because residual.plain still uses it.
    assert len(set(after.runs) - set(before.runs)) == 1
    assert set(before.runs) <= set(after.runs)
    assert after.hessian_key == before.hessian_key


def test_execution_settings_keep_keys(smoke_config):
    before = build_plan(smoke_config, REPO / "src")
    moved = copy.deepcopy(smoke_config)
    moved.update(device="cuda", data_dir="/elsewhere", threads={"train": 8, "hessian": 8, "notebook": 2})
    assert set(build_plan(moved, REPO / "src").runs) == set(before.runs)


def test_code_edit_changes_training_keys(smoke_config, tmp_path):
    source = tmp_path / "src"
    shutil.copytree(REPO / "src", source, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    before = build_plan(smoke_config, source)
    with (source / "backmatch" / "models" / "vgg.py").open("a") as handle:
        handle.write("\n# an edit\n")
    after = build_plan(smoke_config, source)
    assert not set(before.runs) & set(after.runs)
    assert after.hessian_key != before.hessian_key
    assert after.backmatching_key != before.backmatching_key


def test_notebook_helpers_are_not_in_training_closure():
    files = {path.relative_to(REPO / "src").as_posix() for path in import_closure(REPO / "src", "backmatch.training.run")}
    assert "backmatch/training/loop.py" in files
    assert "backmatch/models/vgg.py" in files
    assert "backmatch/hessian/operators.py" in files
    assert not any(name.startswith("backmatch/reporting/") for name in files)
    assert "backmatch/cli.py" not in files


def test_code_digest_is_stable():
    assert code_digest(REPO / "src", "backmatch.training.run") == code_digest(REPO / "src", "backmatch.training.run")


def test_figure_inputs_follow_the_figure(smoke_config):
    plan = build_plan(smoke_config, REPO / "src")
    f4 = plan.output_inputs("F4")
    assert all("cifar10-vgg13" in path for path in f4)
    assert not any("hessian" in path for path in f4)
    assert any("/hessian/" in path for path in plan.output_inputs("F3"))
    assert all(path.startswith("results/backmatching/") for path in plan.output_inputs("T1"))
    assert set(OUTPUTS) == {"T1", "T2", "T3", "F1", "F2", "F3", "F4", "F5", "F6"}


def test_scale_label_states_scale(smoke_config):
    plan = build_plan(smoke_config, REPO / "src")
    label = plan.output_parameters("F4")["scale"]
    assert label == "smoke scale: VGG13 width 1/16, 2 epochs, 512 training images, 1 seed(s)"


def test_schema_names_bad_key(smoke_config, schema):
    smoke_config["experiments"]["init"]["variants"]["gaussian"]["lr"] = -1
    smoke_config["train"]["epoch"] = 3
    problems = config_problems(smoke_config, schema)
    assert "experiments.init.variants.gaussian.lr: -1 is less than or equal to the minimum of 0" in problems
    assert any(problem.startswith("train: Additional properties") and "did you mean 'epochs'?" in problem for problem in problems)


def test_invalid_combination_names_variant(smoke_config):
    smoke_config["experiments"]["batchnorm"]["variants"]["bn"]["init"] = "gaussian"
    with pytest.raises(PlanError, match="experiments.batchnorm.variants.bn"):
        build_plan(smoke_config, REPO / "src")


def test_late_hessian_epoch_is_rejected(smoke_config):
    smoke_config["experiments"]["init"]["hessian_epochs"] = [0, 9]
    with pytest.raises(PlanError, match=r"hessian_epochs: \[9\]"):
        build_plan(smoke_config, REPO / "src")
