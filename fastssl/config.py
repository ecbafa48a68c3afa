"""The run configuration: a tree of dataclasses, every field documented in place.

Overrides on the command line name the section and field: `--algo.tau=0.9`, `--train.steps 2000`.
The algorithm's own hyper-parameters live under `algo.` and are validated by the algorithm's `Config`
once `--algo.name` is known. Cross-field checks run in `Config.validate()` before anything is built, so a
bad option fails in the first second with a message that names the fix.
"""
from __future__ import annotations

import ast
import dataclasses
import functools
import importlib
import inspect
import json
import types
import typing
from dataclasses import dataclass, field
from typing import Any


@dataclass
class DataConfig:
    name: str = "digits"
    """dataset (`fastssl info` lists them): digits is the offline default (ships with scikit-learn);
    synthetic: pre-made random batches on the device, no files, no DALI (times the step apart from the data path)"""
    root: str | None = None
    """folder (or archive) holding the dataset files; not needed for digits"""
    num_labels: int = 20
    """labeled samples in total, class-balanced (a multiple of the class count)"""
    split_seed: int = 0
    """seed of the labeled/unlabeled split (independent of the training seed)"""
    split: str = "random"
    """labeled-set selection, class-balanced: random (seeded draw), representative / unrepresentative (per class the
    images nearest to / farthest from the class medoid, see split_features), or file:PATH (a run's split.npz, a .npy
    or a text file of labeled training-set indices)"""
    split_features: str | None = None
    """(N, D) .npy of training-set features for (un)representative; default: pixels in [0, 1], box-downscaled to ≤32×32"""
    include_labeled_in_unlabeled: bool = True
    """the unlabeled set is the whole training set, labeled samples included (the reference convention)"""
    svhn_extra: bool = False
    """SVHN: add the 531k `extra` images to the unlabeled set"""
    image_size: int = 0
    """side of the square training images; 0 = the dataset's own (required for imagefolder)"""
    batch_size: int = 32
    """global labeled batch per step (divided across ranks)"""
    uratio: int = 7
    """μ: unlabeled samples per labeled sample in a batch"""
    eval_batch_size: int = 256
    """global evaluation batch"""
    num_threads: int = 2
    """DALI worker threads per pipeline"""
    synthetic_classes: int = 10
    """--data.name=synthetic: classes of the random labels (CIFAR-10's count by default)"""
    synthetic_channels: int = 3
    """--data.name=synthetic: image channels (the side is --data.image_size, 32 if 0)"""
    synthetic_samples: int = 50000
    """--data.name=synthetic: size of the training set that the split and `idx_ulb` refer to (CIFAR-10's)"""


@dataclass
class ModelConfig:
    name: str = "cnn_small"
    """architecture (`fastssl info` lists them), or timm/<name> for any timm model (extra: timm)"""
    pretrained: str | None = None
    """timm/<name> models: local weights (a state dict file) to start from, never downloaded; a classifier
    saved for another class count is replaced by a fresh one"""


@dataclass
class OptimConfig:
    lr: float = 0.03
    """peak learning rate (SGD)"""
    momentum: float = 0.9
    """SGD momentum"""
    nesterov: bool = True
    """Nesterov momentum"""
    weight_decay: float = 5e-4
    """L2 weight decay, applied to conv/linear weights only (not BatchNorm or biases)"""
    cosine_cycles: float = 7 / 16
    """the schedule is lr·cos(π·cosine_cycles·k/K) (FixMatch: 7/16)"""
    warmup_steps: int = 0
    """linear learning-rate warm-up steps"""


@dataclass
class TrainConfig:
    steps: int = 1500
    """total optimisation steps K (the schedule's horizon)"""
    seed: int = 0
    """training seed (model init, augmentation, sampling)"""
    ema_decay: float = 0.99
    """EMA teacher decay; evaluation uses the teacher. The published recipes use 0.999 over 2^20 steps; the
    offline default's 1,500 steps need a shorter memory (0.999^1500 still weighs the initial weights 22%)"""
    eval_every: int = 250
    """evaluate every N steps (and at the end)"""
    log_every: int = 50
    """read metrics from the device every N steps (the only host sync in the loop)"""
    ckpt_every: int = 500
    """write a checkpoint every N steps (and at the end); 0 = only at the end"""
    last_n: int = 5
    """report the mean top-1 of the last N evaluations (the published tables' convention)"""
    out: str | None = None
    """run directory (config.json, metrics.jsonl, checkpoints, the labeled split); default runs/<algo>-<dataset>-<time>"""
    resume: str | None = None
    """checkpoint to continue from exactly (a file, or a run directory: its latest checkpoint); auto: the newest
    checkpoint in --train.out if it has one, else start fresh (what a requeued job passes)"""
    compile: str = "auto"
    """torch.compile the train step: auto (on with CUDA, off on CPU), on, off"""
    compile_mode: str = "default"
    """torch.compile mode: default, reduce-overhead (CUDA graphs), max-autotune"""
    amp: str = "auto"
    """mixed precision: auto (bf16 on CUDA, off on CPU), bf16, off"""
    channels_last: str = "auto"
    """channels_last memory format of the model: auto (= on: the batches are NHWC on every device), on, off"""
    cpu_threads: int = 0
    """torch threads per rank on CPU; 0 = auto: the cores left per rank after DALI's `--data.num_threads`, at
    least 1 (measured on 2 cores: 1 thread 240 ms/step vs 2 threads 420 ms/step, as DALI needs the other core)"""
    progress: bool = True
    """progress bar with it/s and ETA on stderr (rank 0)"""
    loggers: tuple[str, ...] = ("jsonl",)
    """where metrics go besides metrics.jsonl (always written): jsonl, tensorboard, wandb (comma list; rank 0)"""


FIXMATCH_POOL = (
    "AutoContrast", "Brightness", "Color", "Contrast", "Equalize", "Identity", "Posterize",
    "Rotate", "Sharpness", "ShearX", "ShearY", "Solarize", "TranslateX", "TranslateY",
)
"""every RandAugment op the strong view knows (USB's pool); magnitude ranges: fastssl.data.augment.OP_RANGES"""


@dataclass(frozen=True)
class AugmentConfig:
    """Every knob of the weak and strong views (built by fastssl.data.augment)."""

    flip_prob: float | None = None
    """probability of a horizontal flip (weak and strong); unset = by dataset: 0.5 for natural images
    (CIFAR, STL-10, image folders), 0 for digits, MNIST and SVHN (a mirrored digit is another digit or none)"""
    crop_pad_frac: float = 0.125
    """reflect padding before the random crop, as a fraction of the side: int(0.125 * 32) = 4 px (USB's
    1 - crop_ratio); 0 disables the crop"""
    num_ops: int = 3
    """RandAugment ops per strong view, drawn with replacement (USB: RandAugment(3, 5) → 3; FixMatch paper: 2)"""
    medium_num_ops: int = 1
    """ops of the medium view, for algorithms that ask for one (SequenceMatch; USB: RandAugment(1, 5) → 1)"""
    ops: tuple[str, ...] = FIXMATCH_POOL
    """the RandAugment pool (names from ``FIXMATCH_POOL``)"""
    cutout_max_frac: float = 0.5
    """Cutout side is U(0, cutout_max_frac) x width (USB: 0.5); 0 disables Cutout"""
    cutout_fill: tuple[int, int, int] = (125, 123, 114)
    """Cutout fill colour, uint8 RGB (USB's)"""
    geometric_fill: int = 0
    """fill of the area uncovered by Rotate/Shear/Translate (PIL's default, black)"""
    policy: str = "randaugment"
    """the strong view's ops: randaugment (uniform over `ops`) or ctaugment (ReMixMatch's learnt per-op,
    per-magnitude-bin weights; fastssl.data.ctaugment; `ops` unused, `num_ops` ops per view)"""

    def __post_init__(self):
        unknown = [o for o in self.ops if o not in FIXMATCH_POOL]
        if unknown:
            raise ValueError(f"--aug.ops has unknown ops {unknown}; choose from {list(FIXMATCH_POOL)}")
        if not self.ops and self.num_ops > 0:
            raise ValueError("--aug.ops is empty; set --aug.num_ops=0 to disable RandAugment")
        if self.policy == "ctaugment" and self.medium_num_ops > self.num_ops:
            raise ValueError(f"--aug.medium_num_ops={self.medium_num_ops} > --aug.num_ops={self.num_ops}: under "
                             "CTAugment the medium view takes the first ops of a draw; lower it")
        if self.policy not in ("randaugment", "ctaugment"):
            raise ValueError(f"--aug.policy={self.policy!r} is unknown; use randaugment or ctaugment")
        if self.flip_prob is not None and not 0.0 <= self.flip_prob <= 1.0:
            raise ValueError(f"--aug.flip_prob={self.flip_prob} must be in [0, 1]")
        if not 0.0 <= self.crop_pad_frac < 1.0:
            raise ValueError(f"--aug.crop_pad_frac={self.crop_pad_frac} must be in [0, 1)")


SECTIONS = ("data", "model", "optim", "train", "aug", "algo")


def _registry(module: str):
    """A name registry one floor up (algorithms, models, datasets), imported by name when an option is
    resolved or checked. The registries are plain name → "module:object" tables: importing one loads no
    torch, DALI or Triton, and an algorithm's module loads only when its `--algo.name` is chosen."""
    return importlib.import_module(module)


def algorithm_config(name: str) -> Any:
    """A fresh `Config` of the algorithm registered as `name` (imports that algorithm's module only)."""
    return _registry("fastssl.algorithms").get_algorithm(name).Config()


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    aug: AugmentConfig = field(default_factory=AugmentConfig)
    algo_name: str = "fixmatch"
    """algorithm (--algo.name): see `fastssl info`"""
    algo: Any = field(default_factory=lambda: algorithm_config("fixmatch"))
    """the algorithm's own options (its `Config` dataclass, subclass of fastssl.algorithms.base.AlgorithmConfig)"""

    def validate(self) -> "Config":
        """Cross-field checks; each error names the option and the fix."""
        d, o, t = self.data, self.optim, self.train
        _registry("fastssl.algorithms").get_algorithm(self.algo_name)
        _registry("fastssl.train.loggers").check_loggers(t.loggers)
        models = _registry("fastssl.models.registry").MODELS
        if self.model.name.startswith("timm/"):
            _registry("fastssl.models.timm_backbone").check_timm(self.model.name, self.model.pretrained)
        elif self.model.pretrained:
            raise ValueError("--model.pretrained works with timm/<name> models; the built-in models start fresh")
        elif self.model.name not in models:
            raise ValueError(f"unknown model --model.name={self.model.name!r}; choose one of: {', '.join(sorted(models))}")
        datasets = _registry("fastssl.data.registry").DATASETS
        if d.name not in datasets:
            raise ValueError(f"unknown dataset --data.name={d.name!r}; choose one of: {', '.join(datasets)}")
        checks = [
            (o.lr > 0, f"--optim.lr={o.lr} must be > 0 (FixMatch uses 0.03)"),
            (o.weight_decay >= 0, f"--optim.weight_decay={o.weight_decay} must be ≥ 0"),
            (0 <= o.momentum < 1, f"--optim.momentum={o.momentum} must be in [0, 1)"),
            (t.steps > 0, f"--train.steps={t.steps} must be > 0"),
            (0 <= t.ema_decay < 1, f"--train.ema_decay={t.ema_decay} must be in [0, 1)"),
            (d.batch_size > 0, f"--data.batch_size={d.batch_size} must be > 0"),
            (d.uratio > 0, f"--data.uratio={d.uratio} must be > 0"),
            (t.eval_every > 0 and t.log_every > 0, "--train.eval_every and --train.log_every must be > 0"),
            (t.cpu_threads >= 0, f"--train.cpu_threads={t.cpu_threads} must be ≥ 0 (0 = auto)"),
            (t.ckpt_every >= 0, f"--train.ckpt_every={t.ckpt_every} must be ≥ 0 (0 = only at the end)"),
            (t.compile in ("auto", "on", "off"), f"--train.compile={t.compile!r}: use auto, on or off"),
            (t.compile_mode in ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"),
             f"--train.compile_mode={t.compile_mode!r}: use default, reduce-overhead or max-autotune"),
            (t.amp in ("auto", "bf16", "off"), f"--train.amp={t.amp!r}: use auto, bf16 or off"),
            (t.channels_last in ("auto", "on", "off"), f"--train.channels_last={t.channels_last!r}: use auto, on or off"),
            (not datasets[d.name].needs_root or d.root, f"--data.name={d.name} needs --data.root=FOLDER (where its files are)"),
            (d.image_size >= 0, f"--data.image_size={d.image_size} must be ≥ 0 (0 = the dataset's own)"),
            (d.name != "imagefolder" or d.image_size > 0,
             "--data.name=imagefolder needs --data.image_size=N, the side its images are resized to (e.g. 224)"),
            *_algo_checks(self.algo),
            (d.split in ("random", "representative", "unrepresentative") or d.split.startswith("file:"),
             f"--data.split={d.split!r}: use random, representative, unrepresentative or file:PATH"),
            (d.split_features is None or d.split.endswith("representative"),
             "--data.split_features is used only by --data.split=representative or unrepresentative"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ValueError(msg)
        return self

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["algo"] = {"name": self.algo_name, **out.pop("algo")}
        del out["algo_name"]
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Config":
        cfg = cls()
        apply_overrides(cfg, flatten(d))
        return cfg


def _algo_checks(a: Any) -> list[tuple[bool, str]]:
    """Ranges of the fields several algorithms share, checked by name so that every algorithm with the field
    is covered (an algorithm's own `__post_init__` checks only its own fields)."""
    checks = []
    for name in (f.name for f in dataclasses.fields(a)):
        v, opt = getattr(a, name), f"--algo.{name}={getattr(a, name)}"
        if name == "tau":
            checks.append((0 < v <= 1, f"{opt} is a confidence threshold: use (0, 1] (FixMatch: 0.95; above 1 "
                                       "no pseudo-label is ever selected)"))
        elif name == "ema_p":
            checks.append((0 <= v < 1, f"{opt} is an EMA momentum: use [0, 1) (USB: 0.999)"))
        elif name.startswith("lambda_") or name.endswith("_weight"):
            checks.append((v >= 0, f"{opt} is a loss weight: use ≥ 0 (0 turns the term off)"))
        elif name in ("T", "mcc_T"):
            checks.append((v > 0, f"{opt} is a softmax temperature: use > 0"))
        elif name == "n_sigma":
            checks.append((v > 0, f"{opt} divides σ_t: use > 0 (SoftMatch: 2)"))
        elif name in ("unsup_warmup", "warmup_frac", "rho_update_frac"):
            checks.append((0 <= v <= 1, f"{opt} is a fraction of --train.steps: use [0, 1]"))
    return checks


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _parse_value(raw: Any, typ: Any, key: str) -> Any:
    """Converts a command-line string to the field's type (values from JSON pass through checks)."""
    origin = typing.get_origin(typ)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(typ) if a is not type(None)]
        if raw is None or (isinstance(raw, str) and raw.lower() in ("none", "null", "")):
            return None
        return _parse_value(raw, args[0], key)
    if origin is tuple:
        args = typing.get_args(typ)
        items = raw.split(",") if isinstance(raw, str) else list(raw)
        items = [i.strip() if isinstance(i, str) else i for i in items if i != ""]
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_parse_value(i, args[0], key) for i in items)
        if len(items) != len(args):
            raise ValueError(f"--{key}={raw!r} needs {len(args)} comma-separated values")
        return tuple(_parse_value(i, a, key) for i, a in zip(items, args))
    if not isinstance(raw, str):
        if typ is float and isinstance(raw, int):
            return float(raw)
        return raw
    try:
        if typ is bool:
            low = raw.lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if typ in (int, float):
            return typ(raw)
        return raw
    except ValueError:
        raise ValueError(f"--{key}={raw!r} is not a valid {getattr(typ, '__name__', typ)}") from None


def _replace_fields(obj: Any, values: dict[str, Any], section: str) -> Any:
    """A copy of the dataclass `obj` with `values` (command-line strings or JSON values) converted to the fields'
    types. Built through the constructor, so the section's own checks (__post_init__) run."""
    fields = {f.name for f in dataclasses.fields(obj)}
    unknown = sorted(set(values) - fields)
    if unknown:
        raise ValueError(f"unknown option(s) {', '.join(f'--{section}.{k}' for k in unknown)}; valid in this "
                         f"section: {', '.join(f'--{section}.{n}' for n in sorted(fields))}")
    hints = typing.get_type_hints(type(obj))
    return dataclasses.replace(obj, **{k: _parse_value(v, hints[k], f"{section}.{k}") for k, v in values.items()})


def apply_overrides(cfg: Config, overrides: dict[str, Any]) -> Config:
    """Applies {"section.field": value} in place. `algo.name` first, then the algorithm's own fields."""
    overrides = dict(overrides)
    if "algo.name" in overrides:
        cfg.algo_name = str(overrides.pop("algo.name"))
        cfg.algo = algorithm_config(cfg.algo_name)
    by_section: dict[str, dict[str, Any]] = {}
    for key, raw in overrides.items():
        section, _, name = key.partition(".")
        if section not in SECTIONS or not name:
            raise ValueError(f"unknown option --{key}; options look like --SECTION.FIELD with SECTION in "
                             f"{', '.join(SECTIONS)} (see --help)")
        by_section.setdefault(section, {})[name] = raw
    for section, values in by_section.items():
        setattr(cfg, section, _replace_fields(getattr(cfg, section), values, section))
    return cfg


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """The docstring written under each field (`x: int = 1` then `\"\"\"doc\"\"\"`), read from the source."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            tree = ast.parse(inspect.getsource(klass).lstrip())
        except (OSError, TypeError):
            continue
        body = tree.body[0].body
        for node, nxt in zip(body, body[1:]):
            if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                    and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant)
                    and isinstance(nxt.value.value, str)):
                docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def as_typed(value: Any) -> str:
    """A value the way it is written on the command line (the inverse of `_parse_value`)."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (tuple, list)):
        return ",".join(as_typed(v) for v in value)
    return str(value)


def describe(cfg: Config | None = None) -> list[tuple[str, str, str]]:
    """(option, default, meaning) for every option of `cfg`, for --help. Without `cfg`: the defaults of every
    section but `algo`'s own fields, which live in the algorithm's module and so import torch (1.5 s on the
    2-core machines); `fastssl train --help` without options prints these in 0.1 s."""
    names = sorted(_registry("fastssl.algorithms").ALGORITHMS)  # names only: no algorithm module is imported
    rows = [("--algo.name", cfg.algo_name if cfg else Config.algo_name, f"algorithm: {', '.join(names)}")]
    plain = {f.name: f.default_factory for f in dataclasses.fields(Config) if f.name in SECTIONS and f.name != "algo"}
    for section in SECTIONS:
        if cfg is None and section == "algo":
            continue
        obj = cfg.algo if section == "algo" else getattr(cfg, section) if cfg else plain[section]()
        docs = field_docs(type(obj))
        for f in dataclasses.fields(obj):
            rows.append((f"--{section}.{f.name}", as_typed(getattr(obj, f.name)), docs.get(f.name, "")))
    return rows
