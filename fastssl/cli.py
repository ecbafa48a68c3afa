"""`fastssl train | eval | info | bench`: parse, build, run. Thin by design."""
from __future__ import annotations

import sys
import textwrap

from fastssl.train.errors import EXIT_CODES, RunError

USAGE = """usage: fastssl train [--recipe NAME] [--out DIR] [--resume DIR|auto] [--SECTION.FIELD=VALUE ...]
       fastssl eval --checkpoint PATH [--data.root DIR]
       fastssl info
       fastssl report RUN_DIR [RUN_DIR ...] [--out DIR]   PNG plots + Markdown summary (extra: plots)
       fastssl bench [step|pipeline|kernels|scaling|summarize] [--help]   (default: step)
       fastssl train --help         every option, its default and meaning (add --algo.name=X for X's own options)
Launch on N GPUs (or N CPU processes) with: torchrun --nproc_per_node=N -m fastssl train ...
"""

SHORT = {"out": "train.out", "resume": "train.resume"}
"""short forms: --out DIR is --train.out DIR, --resume DIR|auto is --train.resume DIR|auto"""


def parse_overrides(argv: list[str]) -> tuple[dict[str, str], dict[str, str]]:
    """Splits argv into {"section.field": value} overrides and plain options ({"recipe": ..., "checkpoint": ...}).
    Accepts `--key=value` and `--key value`."""
    overrides: dict[str, str] = {}
    plain: dict[str, str] = {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("--"):
            raise ValueError(f"unexpected argument {arg!r}; options look like --train.steps=1000 (see --help)")
        key, eq, val = arg[2:].partition("=")
        if not eq:
            if key == "help":
                plain["help"] = "1"
                i += 1
                continue
            if i + 1 >= len(argv) or argv[i + 1].startswith("--"):
                raise ValueError(f"--{key} needs a value: --{key}=VALUE")
            val = argv[i + 1]
            i += 1
        key = SHORT.get(key, key)
        (overrides if "." in key else plain)[key] = val
        i += 1
    return overrides, plain


def make_config(overrides: dict[str, str], recipe: str | None):
    from fastssl.config import Config, apply_overrides
    from fastssl.recipes import get_recipe

    cfg = Config()
    if recipe:
        apply_overrides(cfg, get_recipe(recipe))
    apply_overrides(cfg, overrides)
    return cfg


def print_help(cfg) -> None:
    """Every option of `cfg`; `cfg=None` (plain `fastssl train --help`): every option but the algorithm's own,
    which need its module and so torch (see `config.describe`)."""
    from fastssl.config import describe

    print(USAGE)
    print("options (default, meaning):")
    if cfg is None:
        print("  (the algorithm's own --algo.* options: fastssl train --algo.name=NAME --help; default fixmatch)")
    for opt, default, doc in describe(cfg):
        print(f"  {opt}={default}")
        if doc:
            print(textwrap.fill(doc, 100, initial_indent=" " * 6, subsequent_indent=" " * 6))
    print("  --recipe=NAME\n      named published setup applied before the other options (see `fastssl info`)")
    print("  --out=DIR, --resume=DIR|auto\n      short for --train.out, --train.resume")
    print("exit codes:\n" + EXIT_CODES)


def cmd_train(argv: list[str]) -> int:
    overrides, plain = parse_overrides(argv)
    unknown = set(plain) - {"recipe", "help"}
    if unknown:
        raise ValueError(f"unknown option(s) {', '.join('--' + k for k in sorted(unknown))}; see fastssl train --help")
    if "help" in plain and not overrides and "recipe" not in plain:
        print_help(None)  # no option changes a default: no Config, no algorithm module, no torch
        return 0
    cfg = make_config(overrides, plain.get("recipe"))
    if "help" in plain:
        print_help(cfg)
        return 0
    cfg.validate()
    from fastssl.train.trainer import Trainer

    Trainer(cfg).fit()
    return 0


def cmd_eval(argv: list[str]) -> int:
    overrides, plain = parse_overrides(argv)
    if "checkpoint" not in plain:
        raise ValueError("fastssl eval needs --checkpoint PATH (a ckpt-<step>.pt file or a run directory)")
    import json

    from fastssl.config import Config, apply_overrides
    from fastssl.train.checkpoint import load_checkpoint
    from fastssl.train.trainer import Trainer

    ck = load_checkpoint(plain["checkpoint"], option="--checkpoint")
    cfg = Config.from_dict(ck["config"])
    apply_overrides(cfg, overrides)  # e.g. a moved --data.root
    cfg.train.resume = None
    trainer = Trainer(cfg, build_train=False, split=ck.get("split"))  # the checkpoint's split: not made again
    trainer.ema.load_state_dict(ck["ema"])
    result = {"checkpoint": ck["path"], "step": ck["step"], **trainer.evaluate()}
    if trainer.rank == 0:
        print(json.dumps(result))
    return 0


def cmd_info() -> int:
    """Names and one-line facts from the registries (plain tables: no torch, DALI or Triton is imported)."""
    from fastssl.algorithms import ALGORITHMS
    from fastssl.data.registry import DATASETS
    from fastssl.models.registry import MODELS
    from fastssl.recipes import RECIPES

    print("algorithms: " + ", ".join(sorted(ALGORITHMS)))
    print("models:")
    for name, m in MODELS.items():
        print(f"  {name:12} {m.summary}")
    print(f"  {'timm/<name>':12} any timm model as the backbone (extra: timm), --model.pretrained=PATH for local weights")
    print("datasets (--data.name):")
    for name, d in DATASETS.items():
        print(f"  {name:12} {d.summary}" + ("" if d.flip else "; no horizontal flip"))
    print("recipes:    " + ", ".join(sorted(RECIPES)))
    return 0


BENCHES = {
    "step": "fastssl.bench.step",
    "pipeline": "fastssl.bench.pipeline",
    "kernels": "fastssl.bench.kernels",
    "scaling": "fastssl.bench.scaling",
    "summarize": "fastssl.bench.summarize",
}
"""`fastssl bench NAME` → the harness module (its `main(argv)`); no NAME = step"""


def cmd_bench(argv: list[str]) -> int:
    import importlib

    name = argv[0] if argv and not argv[0].startswith("-") else "step"
    if name not in BENCHES:
        raise ValueError(f"unknown benchmark {name!r}; use fastssl bench [{'|'.join(BENCHES)}] [--help]")
    rest = argv[1:] if argv and argv[0] == name else argv
    return importlib.import_module(BENCHES[name]).main(rest)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    cmd, rest = argv[0], argv[1:]
    try:
        if cmd == "train":
            return cmd_train(rest)
        if cmd == "eval":
            return cmd_eval(rest)
        if cmd == "info":
            return cmd_info()
        if cmd == "bench":
            return cmd_bench(rest)
        if cmd == "report":
            from fastssl.report import main as report_main  # lazy: matplotlib only when drawing

            return report_main(rest)
        raise ValueError(f"unknown command {cmd!r}")
    except (ValueError, FileNotFoundError) as e:
        print(f"fastssl: error: {e}", file=sys.stderr)
        return 2
    except RunError as e:  # refused or stopped early (preempted, diverged): one line and its exit code
        print(f"fastssl: {'error: ' if e.code == 2 else ''}{e}", file=sys.stderr)
        return e.code
