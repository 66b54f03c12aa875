"""The study plan: which runs, analyses and figures a workflow config requests.

This module turns a config (the YAML under ``config/``) into training runs, each
keyed by a content hash of its settings and of the source code it executes, and
lists the inputs of every figure and table. It imports neither torch nor
Snakemake, so the Snakefile can use it before any job starts, and tests can
check it directly.

Cache keys: a run's key hashes its settings and the source files of every
``backmatch`` module that the training entry point imports, found by reading
import statements. Execution details such as device and threads stay out of
the key, because they change results only at the level of floating-point
rounding. Two configs that
describe the same run therefore share its folder, a changed setting gives a new
folder, and an edit to a module the training imports gives every run a new key.
"""

from __future__ import annotations

import ast
import difflib
import hashlib
import json
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

from backmatch.settings import TrainSettings

#: The experiments a config must define, and the figures and tables that read them.
EXPERIMENTS = ("init", "residual", "batchnorm", "optimizer")

#: Figure and table ids, in report order, with the experiments and artefacts each reads.
OUTPUTS: dict[str, dict[str, Any]] = {
    "T1": {"kind": "table", "experiments": (), "hessian": False, "backmatching": True},
    "F1": {"kind": "figure", "experiments": ("init",), "hessian": True, "backmatching": False},
    "F2": {"kind": "figure", "experiments": ("residual",), "hessian": True, "backmatching": False},
    "F3": {"kind": "figure", "experiments": ("batchnorm",), "hessian": True, "backmatching": False},
    "F4": {"kind": "figure", "experiments": ("optimizer",), "datasets": ("cifar10",), "hessian": False, "backmatching": False},
    "F5": {"kind": "figure", "experiments": ("optimizer",), "datasets": ("cifar100",), "hessian": False, "backmatching": False},
    "T2": {"kind": "table", "experiments": ("optimizer",), "hessian": False, "backmatching": False},
    "F6": {"kind": "figure", "experiments": ("optimizer",), "datasets": ("cifar10",), "hessian": False, "backmatching": False},
    "T3": {"kind": "table", "experiments": ("batchnorm",), "hessian": True, "backmatching": False},
}

#: Entry modules whose import closure forms the code part of each cache key.
ENTRY_MODULES = {
    "train": "backmatch.training.run",
    "hessian": "backmatch.hessian.command",
    "backmatching": "backmatch.backmatching.command",
}


class PlanError(ValueError):
    """An invalid workflow config; the message names the config key and the fix."""


def config_problems(config: dict[str, Any], schema: dict[str, Any]) -> list[str]:
    """Return one line per schema violation of ``config``, naming the key by its dotted path.

    Example:
        >>> schema = {"type": "object", "properties": {"lr": {"type": "number", "exclusiveMinimum": 0}}}
        >>> config_problems({"lr": -1}, schema)
        ['lr: -1 is less than or equal to the minimum of 0']
    """
    import jsonschema

    validator = jsonschema.Draft202012Validator(schema)
    problems = []
    for error in sorted(validator.iter_errors(config), key=lambda error: list(map(str, error.absolute_path))):
        where = ".".join(str(part) for part in error.absolute_path) or "(top level)"
        problems.append(f"{where}: {error.message}{_suggestion(error)}")
    return problems


def _suggestion(error) -> str:
    """Return ``" (did you mean 'epochs'?)"`` for a misspelt key, else an empty string."""
    if error.validator != "additionalProperties" or not isinstance(error.instance, dict):
        return ""
    known = list(error.schema.get("properties", {}))
    hints = []
    for key in error.instance:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            if close:
                hints.append(f"{key!r}: did you mean {close[0]!r}?")
    return f" ({'; '.join(hints)})" if hints else ""


def _module_file(package_root: Path, module: str) -> Path | None:
    """Return the source file of ``module`` below ``package_root`` (the folder holding ``backmatch``)."""
    path = package_root.joinpath(*module.split("."))
    if (path / "__init__.py").is_file():
        return path / "__init__.py"
    if path.with_suffix(".py").is_file():
        return path.with_suffix(".py")
    return None


def _imported_modules(source: Path, module: str) -> set[str]:
    """Return the ``backmatch`` modules that ``source`` imports anywhere in its body."""
    tree = ast.parse(source.read_text(encoding="utf-8"), filename=str(source))
    package = module if source.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            found.add(name)
            # "from package import submodule" imports the submodule too.
            found.update(f"{name}.{alias.name}" for alias in node.names)
    return {name for name in found if name == "backmatch" or name.startswith("backmatch.")}


def import_closure(package_root: Path, entry: str) -> list[Path]:
    """Return the source files of ``entry`` and of every ``backmatch`` module it imports, recursively.

    Parent packages (their ``__init__.py``) are included, because importing a
    submodule runs them.
    """
    seen: dict[str, Path] = {}
    pending = [entry]
    while pending:
        module = pending.pop()
        if module in seen:
            continue
        path = _module_file(package_root, module)
        if path is None:
            continue
        seen[module] = path
        parts = module.split(".")
        pending.extend(".".join(parts[:end]) for end in range(1, len(parts)))
        pending.extend(_imported_modules(path, module))
    return sorted(seen.values())


def code_digest(package_root: Path, entry: str) -> str:
    """Return a SHA-256 over the relative paths and bytes of :func:`import_closure` files."""
    hasher = hashlib.sha256()
    for path in import_closure(package_root, entry):
        hasher.update(str(path.relative_to(package_root)).encode())
        hasher.update(b"\0")
        hasher.update(path.read_bytes())
        hasher.update(b"\0")
    return hasher.hexdigest()


def content_key(data: Any, length: int = 12) -> str:
    """Return the first ``length`` hex digits of SHA-256 over canonical JSON of ``data``.

    Example:
        >>> content_key({"b": 1, "a": 2}) == content_key({"a": 2, "b": 1})
        True
    """
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def _width_label(width: float) -> str:
    fraction = Fraction(width).limit_denominator(64)
    return f"{fraction.numerator}/{fraction.denominator}" if fraction.denominator != 1 else str(fraction.numerator)


@dataclass
class Run:
    """One training run of the plan.

    Attributes:
        run_id: folder name under ``results/runs``: readable prefix plus key.
        key: content hash of settings and training code.
        settings: :meth:`TrainSettings.identity` plus the checkpoint epochs, passed
            to ``backmatch train``. The data folder, device and threads come from
            the workflow config instead, so changing them reuses the run.
        checkpoint_epochs: epochs whose checkpoints analyses read.
        members: (experiment, variant) pairs that use this run.
    """

    run_id: str
    key: str
    settings: dict[str, Any]
    checkpoint_epochs: tuple[int, ...]
    members: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class Member:
    """One (experiment, variant, dataset, seed) cell and the run that serves it."""

    experiment: str
    variant: str
    dataset: str
    seed: int
    run_id: str
    hessian_epochs: tuple[int, ...]


@dataclass
class Plan:
    """Everything the workflow builds, derived from one config."""

    runs: dict[str, Run]
    members: list[Member]
    hessian_key: str
    backmatching_key: str
    seeds: tuple[int, ...]
    config: dict[str, Any]

    def run_outputs(self, run_id: str) -> dict[str, list[str] | str]:
        """Return the declared output files of a training run."""
        folder = f"results/runs/{run_id}"
        run = self.runs[run_id]
        return {
            "summary": f"{folder}/summary.json",
            "metrics": f"{folder}/metrics.csv",
            "blocks": f"{folder}/blocks.csv",
            "checkpoints": [f"{folder}/checkpoints/epoch_{epoch:03d}.pt" for epoch in run.checkpoint_epochs],
        }

    def hessian_path(self, run_id: str, epoch: int) -> str:
        return f"results/hessian/{run_id}/{self.hessian_key}/epoch_{epoch:03d}.json"

    def backmatching_path(self, seed: int) -> str:
        return f"results/backmatching/{self.backmatching_key}/seed_{seed}.json"

    def output_members(self, output_id: str) -> list[Member]:
        """Return the cells that figure or table ``output_id`` reads."""
        spec = OUTPUTS[output_id]
        datasets = spec.get("datasets")
        return [
            member for member in self.members
            if member.experiment in spec["experiments"] and (datasets is None or member.dataset in datasets)
        ]

    def output_inputs(self, output_id: str) -> list[str]:
        """Return every file that figure or table ``output_id`` reads."""
        spec = OUTPUTS[output_id]
        paths: list[str] = []
        for member in self.output_members(output_id):
            outputs = self.run_outputs(member.run_id)
            paths += [outputs["summary"], outputs["metrics"], outputs["blocks"]]
            if spec["hessian"]:
                paths += [self.hessian_path(member.run_id, epoch) for epoch in member.hessian_epochs]
        if spec["backmatching"]:
            paths += [self.backmatching_path(seed) for seed in self.seeds]
        return sorted(set(paths))

    def output_parameters(self, output_id: str) -> dict[str, Any]:
        """Return the notebook parameters of figure or table ``output_id``.

        Cells are sorted, so the parameters do not depend on the order in which
        a config lists its variants.
        """
        members = sorted(self.output_members(output_id), key=lambda m: (m.experiment, m.variant, m.dataset, m.seed))
        runs = []
        for member in members:
            runs.append({
                "experiment": member.experiment,
                "variant": member.variant,
                "dataset": member.dataset,
                "seed": member.seed,
                "run_dir": f"results/runs/{member.run_id}",
                "hessian": {str(epoch): self.hessian_path(member.run_id, epoch) for epoch in member.hessian_epochs}
                if OUTPUTS[output_id]["hessian"] else {},
            })
        return {
            "output_id": output_id,
            "runs": runs,
            "backmatching": [self.backmatching_path(seed) for seed in self.seeds] if OUTPUTS[output_id]["backmatching"] else [],
            "scale": self.scale_label(members),
        }

    def scale_label(self, members: list[Member]) -> str:
        """Describe the scale of the runs behind a figure, e.g. ``laptop scale: width 1/8, 10 epochs, ...``."""
        name = self.config.get("scale", "custom")
        if not members:
            return f"{name} scale: {len(self.seeds)} seed(s)"
        parts = []
        settings = [self.runs[member.run_id].settings for member in members]
        models = sorted({s["model"] for s in settings})
        for model in models:
            of_model = [s for s in settings if s["model"] == model]
            if model == "vgg13":
                widths = sorted({_width_label(s["width"]) for s in of_model})
                parts.append(f"VGG13 width {', '.join(widths)}")
            else:
                shapes = sorted({f"width {int(s['width'])} with {s['depth']} hidden blocks" for s in of_model})
                parts.append(f"MLP {', '.join(shapes)}")
        epochs = sorted({s["epochs"] for s in settings})
        parts.append(f"{'/'.join(map(str, epochs))} epochs")
        subsets = sorted({s["train_subset"] or 50_000 for s in settings})
        parts.append(f"{'/'.join(f'{size:,}' for size in subsets)} training images")
        seeds = sorted({member.seed for member in members})
        parts.append(f"{len(seeds)} seed(s)")
        return f"{name} scale: " + ", ".join(parts)


def _merge(*layers: dict[str, Any]) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for layer in layers:
        for key, value in (layer or {}).items():
            if key == "sa" and isinstance(value, dict):
                merged["sa"] = {**merged.get("sa", {}), **value}
            else:
                merged[key] = value
    return merged


def build_plan(config: dict[str, Any], package_root: Path) -> Plan:
    """Expand ``config`` into runs and cells, validating every run's settings.

    Args:
        config: the workflow config, already checked against the JSON schema.
        package_root: the folder that contains the ``backmatch`` package (``src``).

    Raises:
        PlanError: a run's settings are invalid; the message names the config key.
    """
    missing = [name for name in EXPERIMENTS if name not in config.get("experiments", {})]
    if missing:
        raise PlanError(f"config key experiments is missing {missing}; every config defines {list(EXPERIMENTS)}")

    train_code = code_digest(package_root, ENTRY_MODULES["train"])
    seeds = tuple(config["seeds"])
    runs: dict[str, Run] = {}
    members: list[Member] = []

    for experiment in EXPERIMENTS:
        spec = config["experiments"][experiment]
        datasets = spec.get("datasets") or [config["train"].get("dataset", "cifar10")]
        hessian_epochs = tuple(sorted(set(spec.get("hessian_epochs", []))))
        for variant, overrides in spec["variants"].items():
            for dataset in datasets:
                for seed in seeds:
                    where = f"experiments.{experiment}.variants.{variant}"
                    values = _merge(config["train"], overrides, {"dataset": dataset, "seed": seed})
                    try:
                        settings = TrainSettings.from_dict(values)
                    except (TypeError, ValueError) as error:
                        raise PlanError(f"config key {where} (merged with train): {error}") from None
                    too_late = [epoch for epoch in hessian_epochs if epoch > settings.epochs]
                    if too_late:
                        raise PlanError(
                            f"config key experiments.{experiment}.hessian_epochs: {too_late} exceed the "
                            f"{settings.epochs} training epochs of variant {variant!r}; lower them or raise epochs"
                        )

                    identity = settings.identity()
                    identity.pop("checkpoint_epochs")
                    key = content_key({"settings": identity, "code": train_code})
                    run_id = _run_id(settings, key)
                    run = runs.get(run_id)
                    if run is None:
                        run = runs[run_id] = Run(run_id=run_id, key=key, settings=identity, checkpoint_epochs=())
                    run.checkpoint_epochs = tuple(sorted(set(run.checkpoint_epochs) | set(hessian_epochs)))
                    run.settings["checkpoint_epochs"] = list(run.checkpoint_epochs)
                    run.members.append((experiment, variant))
                    members.append(Member(experiment, variant, dataset, seed, run_id, hessian_epochs))

    hessian_key = "h" + content_key({"settings": config["hessian"], "code": code_digest(package_root, ENTRY_MODULES["hessian"])})
    backmatching_key = "b" + content_key(
        {"settings": config["backmatching"], "code": code_digest(package_root, ENTRY_MODULES["backmatching"])}
    )
    return Plan(runs, members, hessian_key, backmatching_key, seeds, config)


def _run_id(settings: TrainSettings, key: str) -> str:
    if settings.model == "vgg13":
        body = f"vgg13-w{_width_label(settings.width).replace('/', '_')}-{'bn' if settings.bn else 'nobn'}"
    else:
        body = f"mlp{int(settings.width)}x{settings.depth}-{settings.init}-{'res' if settings.residual else 'plain'}"
    return f"{settings.dataset}-{body}-{settings.optimizer}-s{settings.seed}-{key}"
