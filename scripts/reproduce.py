"""Reproduce published tables: run recipes × seeds (resumably), then tabulate them next to the reference.

    python scripts/reproduce.py run 'cifar10_fixmatch_*' cifar10_flexmatch_40 --seeds 0,1,2 \\
        --data-root ~/data/cifar-10-batches-py --nproc 8            # torchrun with 8 processes per run
    python scripts/reproduce.py table                                 # markdown table of runs/reproduce/

Each run writes `OUT/<recipe>/seed<k>/` (the trainer's run directory, plus `train.log`). `run` is safe to
repeat: a run whose `summary.json` reports the recipe's final step is skipped, one with a checkpoint is
resumed from it (`--train.resume`, exact), anything else starts fresh. Options after `--` are passed to
every `fastssl train` (e.g. `-- --train.compile_mode=max-autotune`). `--dry-run` prints the commands.

`table` reports, per recipe, the mean ± sample standard deviation over seeds of the best top-1 and of the
mean of the last 5 evaluations (`train.last_n`), next to TorchSSL's published best top-1 where it has one
(TorchSSL/TorchSSL README.md at commit 045cc9c, "BestAcc", mean ± std over its seeds). TorchSSL's protocol
for Π-Model, Mean Teacher, MixMatch, ReMixMatch and VAT is not identical to USB's classic-CV configs that
the recipes follow (μ, warm-up), so compare those rows with care; FixMatch, FlexMatch and UDA share the
FixMatch protocol. The table is drawn by fastssl.report's code; `fastssl report OUT` plots the same runs.
"""
from __future__ import annotations

import argparse
import fnmatch
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

from fastssl.recipes import RECIPES
from fastssl.report import markdown_table, mean_std

# TorchSSL/TorchSSL README.md @ 045cc9cd8152f8129d0ee77c137fda7316493dc6: best top-1 (%), mean ± std.
TORCHSSL_BEST_TOP1: dict[str, tuple[float, float]] = {
    "cifar10_pimodel_40": (25.66, 1.76), "cifar10_pimodel_250": (53.76, 1.29), "cifar10_pimodel_4000": (86.87, 0.59),
    "cifar10_pseudolabel_40": (26.26, 1.96), "cifar10_pseudolabel_250": (53.86, 1.81),
    "cifar10_pseudolabel_4000": (85.25, 0.19),
    "cifar10_meanteacher_40": (29.91, 1.6), "cifar10_meanteacher_250": (62.54, 3.3),
    "cifar10_meanteacher_4000": (91.9, 0.21),
    "cifar10_vat_40": (25.34, 2.12), "cifar10_vat_250": (58.97, 1.79), "cifar10_vat_4000": (89.49, 0.12),
    "cifar10_mixmatch_40": (63.81, 6.48), "cifar10_mixmatch_250": (86.37, 0.59), "cifar10_mixmatch_4000": (93.34, 0.26),
    "cifar10_remixmatch_40": (90.12, 1.03), "cifar10_remixmatch_250": (93.7, 0.05),
    "cifar10_remixmatch_4000": (95.16, 0.01),
    "cifar10_uda_40": (94.56, 0.52), "cifar10_uda_250": (94.98, 0.07), "cifar10_uda_4000": (95.76, 0.06),
    "cifar10_fixmatch_40": (92.53, 0.28), "cifar10_fixmatch_250": (95.14, 0.05), "cifar10_fixmatch_4000": (95.79, 0.08),
    "cifar10_flexmatch_40": (95.03, 0.06), "cifar10_flexmatch_250": (95.02, 0.09),
    "cifar10_flexmatch_4000": (95.81, 0.01),
    "cifar100_fixmatch_400": (53.22, 0.79), "cifar100_fixmatch_2500": (71.94, 0.2), "cifar100_fixmatch_10000": (77.8, 0.12),
    "stl10_fixmatch_40": (65.85, 0.0), "stl10_fixmatch_250": (89.82, 1.11), "stl10_fixmatch_1000": (93.52, 0.12),
    "svhn_fixmatch_40": (96.19, 1.18), "svhn_fixmatch_250": (97.98, 0.02), "svhn_fixmatch_1000": (98.04, 0.03),
}


def select(patterns: list[str]) -> list[str]:
    """Recipe names matching any of the shell-style `patterns`, in RECIPES order; an error names the
    patterns that match nothing."""
    chosen = [name for name in RECIPES if any(fnmatch.fnmatchcase(name, p) for p in patterns)]
    unmatched = [p for p in patterns if not any(fnmatch.fnmatchcase(n, p) for n in RECIPES)]
    if unmatched:
        raise SystemExit(f"no recipe matches {unmatched}; `fastssl info` lists the {len(RECIPES)} recipes")
    return chosen


def state(run_dir: Path, steps: int) -> str:
    """'done' (summary at the final step), 'resume' (a checkpoint to continue from) or 'new'."""
    summary = run_dir / "summary.json"
    if summary.is_file() and json.loads(summary.read_text()).get("step") == steps:
        return "done"
    if run_dir.is_dir() and any(run_dir.glob("ckpt-*.pt")):
        return "resume"
    return "new"


def command(recipe: str, seed: int, run_dir: Path, *, data_root: str | None, nproc: int, resume: bool,
            extra: list[str]) -> list[str]:
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
                 "-m", "fastssl"] if nproc > 1 else [sys.executable, "-m", "fastssl"])
    cmd = [*launcher, "train", "--recipe", recipe, f"--train.seed={seed}", f"--train.out={run_dir}",
           "--train.progress=false"]
    if data_root:
        cmd.append(f"--data.root={data_root}")
    if resume:
        cmd.append(f"--train.resume={run_dir}")
    elif run_dir.is_dir():  # died before its first checkpoint: the trainer refuses a used folder unless told
        cmd.append("--train.resume=auto")
    return cmd + extra


def run(args) -> int:
    recipes = select(args.recipes)
    seeds = [int(s) for s in args.seeds.split(",") if s != ""]
    out = Path(args.out)
    plan = []
    for recipe in recipes:
        for seed in seeds:
            run_dir = out / recipe / f"seed{seed}"
            steps = _steps(recipe, args.extra)
            plan.append((recipe, seed, run_dir, state(run_dir, steps)))
    todo = [p for p in plan if p[3] != "done"]
    print(f"reproduce: {len(plan)} run(s), {len(plan) - len(todo)} done, {len(todo)} to run, into {out}/", flush=True)
    for i, (recipe, seed, run_dir, st) in enumerate(todo, 1):
        cmd = command(recipe, seed, run_dir, data_root=args.data_root, nproc=args.nproc, resume=st == "resume",
                      extra=args.extra)
        print(f"[{i}/{len(todo)}] {recipe} seed {seed} ({'resuming' if st == 'resume' else 'starting'}): "
              f"{shlex.join(cmd)}", flush=True)
        if args.dry_run:
            continue
        run_dir.mkdir(parents=True, exist_ok=True)
        log = run_dir / "train.log"
        t0 = time.time()
        with open(log, "a") as f:
            rc = subprocess.call(cmd, stdout=f, stderr=subprocess.STDOUT)
        if rc != 0:
            tail = log.read_text().splitlines()[-15:]
            print("\n".join(tail), file=sys.stderr)
            print(f"reproduce: {recipe} seed {seed} failed (exit {rc}) after {time.time() - t0:.0f} s; full log: "
                  f"{log}. Runs already finished are kept; fix the cause and run the same command again to "
                  f"continue where it stopped.", file=sys.stderr)
            return rc
        summary = json.loads((run_dir / "summary.json").read_text())
        print(f"    done in {time.time() - t0:.0f} s: top-1 {summary.get('top1', float('nan')):.2f}, "
              f"best {summary.get('best_top1', float('nan')):.2f}", flush=True)
    return 0


def _steps(recipe: str, extra: list[str]) -> int:
    """The run's final step: the recipe's, unless `--train.steps=N` is among the extra options."""
    steps = RECIPES[recipe]["train.steps"]
    for i, opt in enumerate(extra):
        if opt.startswith("--train.steps="):
            steps = int(opt.split("=", 1)[1])
        elif opt == "--train.steps" and i + 1 < len(extra):  # the CLI's spaced form
            steps = int(extra[i + 1])
    return steps


def collect(out: Path) -> dict[str, list[dict]]:
    """recipe → the summaries of its finished seeds (runs without a summary are skipped)."""
    found: dict[str, list[dict]] = {}
    for summary in sorted(out.glob("*/seed*/summary.json")):
        s = json.loads(summary.read_text())
        if "top1" in s:
            found.setdefault(summary.parent.parent.name, []).append({**s, "seed": summary.parent.name[4:]})
    return found


def table(out: Path) -> str:
    runs = collect(out)
    if not runs:
        raise SystemExit(f"no finished runs under {out}/ (looked for */seed*/summary.json)")
    lines = []
    for recipe in [r for r in RECIPES if r in runs] + sorted(set(runs) - set(RECIPES)):
        rows = runs[recipe]
        best = [r["best_top1"] for r in rows]
        last_key = next((k for k in rows[0] if k.startswith("mean_last")), None)
        last = [r[last_key] for r in rows] if last_key else []
        ref = TORCHSSL_BEST_TOP1.get(recipe)
        ref_s = f"{ref[0]:.2f} ± {ref[1]:.2f}" if ref else "—"
        delta = f"{statistics.mean(best) - ref[0]:+.2f}" if ref else "—"
        seeds = ",".join(r["seed"] for r in rows)
        lines.append([recipe, seeds, mean_std(best), mean_std(last), ref_s, delta])
    return markdown_table(["recipe", "seeds", "best top-1", "mean of last evals", "TorchSSL best top-1", "Δ best"],
                          lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    extra: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1:]
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run recipes x seeds (skips finished runs, resumes interrupted ones)")
    r.add_argument("recipes", nargs="+", help="recipe names or shell patterns, e.g. 'cifar10_*_40'")
    r.add_argument("--seeds", default="0,1,2", help="comma list (default 0,1,2)")
    r.add_argument("--data-root", default=os.environ.get("FASTSSL_DATA"),
                   help="--data.root for every run (default: $FASTSSL_DATA)")
    r.add_argument("--nproc", type=int, default=1, help="processes (GPUs) per run, launched with torchrun")
    r.add_argument("--out", default="runs/reproduce")
    r.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    t = sub.add_parser("table", help="markdown table of the finished runs")
    t.add_argument("--out", default="runs/reproduce")
    args = p.parse_args(argv)
    args.extra = extra
    if args.cmd == "run":
        return run(args)
    print(table(Path(args.out)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
