"""Metric loggers beside metrics.jsonl: TensorBoard and Weights & Biases, both optional extras.

`--train.loggers=jsonl,tensorboard,wandb`. metrics.jsonl stays the record and is always written; the others
are copies for people who already watch runs in those tools. They run on rank 0 only and are handed the
values the trainer has already read to the host (the step metrics every `log_every` steps, each evaluation
record), so a logger never adds a host sync to the loop.

Tags: `train/<metric>` for the step metrics (loss, mask_ratio, ...), `eval/<field>` for an evaluation record
(top1, top5, best_top1, its_per_sec, lr, ...), all at the training step.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any, Protocol, Sequence

# logger name -> (module that must be importable, extra that installs it); jsonl is built in
OPTIONAL = {"tensorboard": ("tensorboard", "tensorboard"), "wandb": ("wandb", "wandb")}
NAMES = ("jsonl", *OPTIONAL)


def check_loggers(names: Sequence[str]) -> None:
    """Fails before anything is built: an unknown name, or a logger whose package is missing (names the pip
    command). Looks the package up without importing it, so the check costs nothing."""
    for name in names:
        if name not in NAMES:
            raise ValueError(f"--train.loggers: unknown logger {name!r}; choose from {', '.join(NAMES)}")
        module, extra = OPTIONAL.get(name, (None, None))
        if module and importlib.util.find_spec(module) is None:
            raise ValueError(f"--train.loggers={name} needs the {module} package: pip install \"fastssl[{extra}]\"")


class Logger(Protocol):
    def log(self, step: int, values: dict[str, float], section: str) -> None: ...
    def close(self) -> None: ...


class TensorBoardLogger:
    """Event files in OUT/tensorboard/ (`tensorboard --logdir OUT`)."""

    def __init__(self, out_dir: Path, config: dict[str, Any]):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(out_dir / "tensorboard"))

    def log(self, step: int, values: dict[str, float], section: str) -> None:
        for k, v in values.items():
            self.writer.add_scalar(f"{section}/{k}", v, global_step=step)
        self.writer.flush()  # a crashed or killed run still leaves what it logged

    def close(self) -> None:
        self.writer.close()


class WandbLogger:
    """A W&B run under OUT/wandb/, named after the run directory, with the full config. Online or offline
    as W&B's own settings say (`WANDB_MODE=offline` needs no account or network; `wandb sync` uploads later)."""

    def __init__(self, out_dir: Path, config: dict[str, Any]):
        import wandb

        self.run = wandb.init(dir=str(out_dir), project="fastssl", name=out_dir.name, config=config,
                              reinit="create_new")

    def log(self, step: int, values: dict[str, float], section: str) -> None:
        self.run.log({f"{section}/{k}": v for k, v in values.items()}, step=step)

    def close(self) -> None:
        self.run.finish()


class Loggers:
    """The chosen loggers as one: `log(step, values, section)` passes on the numeric values (the record's
    own `step` field is the x axis, not a series)."""

    def __init__(self, loggers: list[Logger]):
        self.loggers = loggers

    def log(self, step: int, values: dict[str, Any], section: str) -> None:
        scalars = {k: float(v) for k, v in values.items()
                   if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)}
        for logger in self.loggers:
            logger.log(step, scalars, section)

    def close(self) -> None:
        for logger in self.loggers:
            logger.close()


def open_loggers(names: Sequence[str], out_dir: Path, config: dict[str, Any]) -> Loggers:
    """The loggers named in `--train.loggers` (jsonl is the trainer's own record); pass no names on ranks > 0."""
    check_loggers(names)
    built = {"tensorboard": TensorBoardLogger, "wandb": WandbLogger}
    return Loggers([built[n](out_dir, config) for n in names if n in built])
