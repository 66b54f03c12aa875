"""The full settings of one training run, shared by the CLI, checkpoints and provenance."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

MODELS = ("vgg13", "mlp")
OPTIMIZERS = ("sgd", "sa-sgd")
PRECISIONS = ("fp32", "bf16")
DEVICES = ("auto", "cpu", "cuda")

#: Fields that set where and how fast a run executes but not what it computes.
#: They are recorded in provenance and excluded from :meth:`TrainSettings.identity`.
EXECUTION_FIELDS = ("data_dir", "device", "threads", "progress")


#: Fields that only one model reads.
MODEL_ONLY_FIELDS = {"vgg13": ("bn",), "mlp": ("depth", "relu", "residual", "branch_scale")}


@dataclass(frozen=True)
class ScaleAmendedOptions:
    """Choices of scale-amended SGD; the defaults are the ones the study uses.

    Attributes:
        rule: ``"full"`` multiplies the factors of the blocks above (formula
            ``eta_b = eta * c_b / m_{b,W}``, ``c_{b-1} = c_b / m_{b,z}``);
            ``"local"`` uses ``eta_b = eta / m_{b,W}``.
        scalar: ``"mean"`` (trace / dim) or ``"max"`` (largest eigenvalue) as
            the scalar summary ``m`` of a local Hessian.
        estimator: ``"closed_form"`` from batch statistics, or ``"numerical"``
            (Hutchinson for the mean, power iteration for the max).
        per_channel: one learning rate per output unit instead of per block.
        ema: smoothing of ``m`` across steps, ``m <- ema * m + (1 - ema) * m_batch``.
        normalize: ``"median"`` divides the factors by their median over blocks,
            ``"none"`` keeps them as they are.
        clip_min, clip_max: range the normalised factors are clipped to.
        probes: random probes (Hutchinson) or iterations (power) per numerical estimate.
    """

    rule: str = "full"
    scalar: str = "mean"
    estimator: str = "closed_form"
    per_channel: bool = False
    ema: float = 0.9
    normalize: str = "median"
    clip_min: float = 0.01
    clip_max: float = 100.0
    probes: int = 4


@dataclass(frozen=True)
class TrainSettings:
    """Everything that determines one training run.

    Units: ``lr`` per step, ``epochs`` and ``lr_milestones`` in epochs,
    ``batch_size``, ``train_subset`` and ``test_subset`` in images. ``width`` is
    the channel multiplier of vgg13 and the number of hidden units of mlp;
    ``depth``, ``relu``, ``residual`` and ``branch_scale`` apply to mlp only.
    ``init`` is ``"he"`` for vgg13 and ``"orthogonal"`` or ``"gaussian"`` for mlp,
    chosen by model when unset, and ``width`` defaults to 1 for vgg13 and 256
    for mlp.
    """

    dataset: str = "cifar10"
    data_dir: str = "resources"
    model: str = "vgg13"
    width: float | None = None
    depth: int = 8
    relu: bool = True
    bn: bool = True
    init: str | None = None
    residual: bool = False
    branch_scale: float = 1.0
    optimizer: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    lr_milestones: tuple[int, ...] = ()
    lr_gamma: float = 0.1
    epochs: int = 200
    batch_size: int = 128
    train_subset: int | None = None
    test_subset: int | None = None
    subset_seed: int = 0
    augment: bool = True
    seed: int = 0
    checkpoint_epochs: tuple[int, ...] = ()
    precision: str = "fp32"
    device: str = "auto"
    threads: int | None = None
    progress: bool = True
    sa: ScaleAmendedOptions = field(default_factory=ScaleAmendedOptions)

    def __post_init__(self) -> None:
        if self.init is None:
            object.__setattr__(self, "init", "he" if self.model == "vgg13" else "orthogonal")
        if self.width is None:
            object.__setattr__(self, "width", 1.0 if self.model == "vgg13" else 256.0)
        problems = validation_problems(self)
        if problems:
            raise ValueError("invalid training settings:\n  " + "\n  ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        """Return the settings as plain JSON types."""
        data = dataclasses.asdict(self)
        data["lr_milestones"] = list(self.lr_milestones)
        data["checkpoint_epochs"] = list(self.checkpoint_epochs)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainSettings:
        """Inverse of :meth:`to_dict`; unknown keys raise ``ValueError``."""
        data = dict(data)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown training settings {unknown}; known ones are {sorted(known)}")
        if "sa" in data and isinstance(data["sa"], dict):
            data["sa"] = ScaleAmendedOptions(**data["sa"])
        for key in ("lr_milestones", "checkpoint_epochs"):
            if key in data:
                data[key] = tuple(data[key])
        return cls(**data)

    def identity(self) -> dict[str, Any]:
        """Return the settings that determine the results, without execution details.

        Settings that the run ignores are left out: the scale-amended options of
        plain SGD runs and the fields of the other model.
        """
        data = self.to_dict()
        for name in EXECUTION_FIELDS:
            data.pop(name)
        if self.optimizer == "sgd":
            data.pop("sa")
        for name in MODEL_ONLY_FIELDS["mlp" if self.model == "vgg13" else "vgg13"]:
            data.pop(name)
        return data


def validation_problems(settings: TrainSettings) -> list[str]:
    """Return one message per invalid field, empty when the settings are valid."""
    problems = []

    def check(condition: bool, message: str) -> None:
        if not condition:
            problems.append(message)

    check(settings.dataset in ("cifar10", "cifar100"), f"dataset {settings.dataset!r}: use cifar10 or cifar100")
    check(settings.model in MODELS, f"model {settings.model!r}: use one of {MODELS}")
    check(settings.optimizer in OPTIMIZERS, f"optimizer {settings.optimizer!r}: use one of {OPTIMIZERS}")
    check(settings.precision in PRECISIONS, f"precision {settings.precision!r}: use one of {PRECISIONS}")
    check(settings.device in DEVICES, f"device {settings.device!r}: use one of {DEVICES}")
    check(settings.width > 0, f"width {settings.width}: must be positive")
    check(settings.depth >= 0, f"depth {settings.depth}: must be 0 or more")
    if settings.model == "vgg13":
        check(settings.init == "he", f"init {settings.init!r}: vgg13 is always He-initialised, use he or leave it unset")
    else:
        check(settings.init in ("orthogonal", "gaussian"), f"init {settings.init!r}: use orthogonal or gaussian for mlp")
        check(
            float(settings.width).is_integer() and settings.width >= 1,
            f"width {settings.width}: for mlp it is the number of hidden units, a whole number of at least 1",
        )
    check(settings.lr > 0, f"lr {settings.lr}: must be positive")
    check(0 <= settings.momentum < 1, f"momentum {settings.momentum}: must be in [0, 1)")
    check(settings.weight_decay >= 0, f"weight_decay {settings.weight_decay}: must be 0 or more")
    check(0 < settings.lr_gamma <= 1, f"lr_gamma {settings.lr_gamma}: must be in (0, 1]")
    check(settings.epochs >= 1, f"epochs {settings.epochs}: must be at least 1")
    check(settings.batch_size >= 2, f"batch_size {settings.batch_size}: must be at least 2 for batch normalisation")
    check(
        all(0 < m <= settings.epochs for m in settings.lr_milestones),
        f"lr_milestones {list(settings.lr_milestones)}: each must be in 1..epochs ({settings.epochs})",
    )
    check(
        all(0 <= e <= settings.epochs for e in settings.checkpoint_epochs),
        f"checkpoint_epochs {list(settings.checkpoint_epochs)}: each must be in 0..epochs ({settings.epochs})",
    )
    for name in ("train_subset", "test_subset"):
        value = getattr(settings, name)
        check(value is None or value >= 1, f"{name} {value}: must be at least 1, or unset for the whole split")
    check(settings.threads is None or settings.threads >= 1, f"threads {settings.threads}: must be at least 1")

    sa = settings.sa
    check(sa.rule in ("full", "local"), f"sa.rule {sa.rule!r}: use full or local")
    check(sa.scalar in ("mean", "max"), f"sa.scalar {sa.scalar!r}: use mean or max")
    check(sa.estimator in ("closed_form", "numerical"), f"sa.estimator {sa.estimator!r}: use closed_form or numerical")
    check(
        not (sa.scalar == "max" and sa.estimator == "closed_form"),
        "sa.scalar 'max' needs sa.estimator 'numerical', because the closed forms give traces only",
    )
    check(0 <= sa.ema < 1, f"sa.ema {sa.ema}: must be in [0, 1)")
    check(sa.normalize in ("median", "none"), f"sa.normalize {sa.normalize!r}: use median or none")
    check(0 < sa.clip_min <= 1 <= sa.clip_max, f"sa.clip_min {sa.clip_min}, sa.clip_max {sa.clip_max}: need 0 < min <= 1 <= max")
    check(sa.probes >= 1, f"sa.probes {sa.probes}: must be at least 1")
    return problems
