"""`fastssl report RUN_DIR [RUN_DIR ...] [--out DIR]`: PNG plots and a Markdown summary of finished runs.

Reads each run's metrics.jsonl (the evaluation records) and config.json. Runs whose configs differ only in
the training seed (and in where they were written) are seeds of one recipe: their curves are drawn as the
mean over seeds with a ± one sample standard deviation band, at the steps all of them reached; other runs
are drawn one line each, all overlaid. A RUN_DIR without metrics.jsonl stands for every run below it (e.g.
scripts/reproduce.py's OUT/<recipe>/seed<k>/).

Writes DIR/<metric>.png for top1, loss, mask_ratio, pl_acc, lr, its_per_sec (those some run recorded) and
DIR/summary.md (the table). matplotlib (extra: plots) is imported only to draw, with the Agg backend, so
this module also serves scripts/reproduce.py's table without it.
"""
from __future__ import annotations

import argparse
import json
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

METRICS = {"top1": "top-1 accuracy (%)", "loss": "training loss", "mask_ratio": "mask ratio",
           "pl_acc": "pseudo-label accuracy", "lr": "learning rate", "its_per_sec": "iterations / s"}
# options that change where or how visibly a run is written, not what it computes: ignored when grouping seeds
NOT_RECIPE = {"train.seed", "train.out", "train.resume", "train.progress", "train.loggers", "data.root"}
FIGSIZE, DPI = (6.4, 4.0), 100  # 640 x 400 pixels


@dataclass
class Run:
    path: Path
    config: dict[str, Any]
    records: list[dict[str, Any]]

    @property
    def seed(self) -> Any:
        return self.config.get("train", {}).get("seed")

    def series(self, metric: str) -> tuple[list[int], list[float]]:
        pts = [(r["step"], r[metric]) for r in self.records if metric in r]
        return [s for s, _ in pts], [v for _, v in pts]


@dataclass
class Group:
    label: str
    runs: list[Run]


def mean_std(values: Sequence[float]) -> str:
    """'m ± s' (sample standard deviation) over seeds, the value alone for one, '—' for none."""
    if not values:
        return "—"
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def find_runs(paths: Sequence[str | Path]) -> list[Path]:
    """The run directories named, or found below a named folder that is not one itself."""
    found: list[Path] = []
    for p in map(Path, paths):
        runs = [p] if (p / "metrics.jsonl").is_file() else sorted(m.parent for m in p.glob("**/metrics.jsonl"))
        if not runs:
            raise ValueError(f"{p}: no metrics.jsonl in it or below it; pass run directories (--train.out)")
        found += [r for r in runs if r not in found]
    return found


def read_run(path: Path) -> Run:
    meta = path / "config.json"
    config = json.loads(meta.read_text()).get("config", {}) if meta.is_file() else {}
    records = [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return Run(path, config, records)


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def group_runs(runs: list[Run]) -> list[Group]:
    """Seeds of one recipe together, in the order first seen. A group of seeds is labelled by its runs'
    common parent folder when they share one (reproduce.py's OUT/<recipe>/seed<k>), else by its first run."""
    by_key: dict[str, list[Run]] = {}
    for run in runs:
        key = json.dumps({k: v for k, v in _flat(run.config).items() if k not in NOT_RECIPE}, sort_keys=True,
                         default=str)
        by_key.setdefault(key, []).append(run)
    groups = []
    for members in by_key.values():
        parents = {r.path.resolve().parent for r in members}
        label = (parents.pop().name if len(members) > 1 and len(parents) == 1 else members[0].path.name)
        groups.append(Group(label, members))
    labels = [g.label for g in groups]
    for g in groups:  # e.g. two recipes' seed0 folders: name them with their parent
        if labels.count(g.label) > 1:
            g.label = "/".join(g.runs[0].path.resolve().parts[-2:])
    return groups


def curve(group: Group, metric: str) -> tuple[list[int], list[float], list[float]] | None:
    """(steps, mean, sample std) of `metric` over the group's runs at the steps all of them recorded; std 0
    for a single run. None if no run recorded it."""
    per_run = [dict(zip(*r.series(metric))) for r in group.runs]
    steps = sorted(set.intersection(*(set(p) for p in per_run)))
    if not steps:
        return None
    vals = [[p[s] for p in per_run] for s in steps]
    return (steps, [statistics.mean(v) for v in vals],
            [statistics.stdev(v) if len(v) > 1 else 0.0 for v in vals])


def plot_metric(groups: list[Group], metric: str):
    """One figure: a line per group (its seeds' mean) and, for several seeds, the ± std band."""
    import matplotlib

    matplotlib.use("Agg")  # files only; never a window
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=FIGSIZE, dpi=DPI)
    for g in groups:
        c = curve(g, metric)
        if c is None:
            continue
        steps, mean, std = c
        n = len(g.runs)
        (line,) = ax.plot(steps, mean, marker="." if len(steps) < 30 else None,
                          label=g.label if n == 1 else f"{g.label} (mean ± std, {n} seeds)")
        if n > 1:
            ax.fill_between(steps, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)],
                            color=line.get_color(), alpha=0.2, linewidth=0)
    ax.set_xlabel("step")
    ax.set_ylabel(METRICS[metric])
    if metric == "loss":
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    return fig


def its_per_sec(run: Run) -> float:
    """Training steps over training time across the whole run (each record holds its interval's rate)."""
    steps = time = 0.0
    prev = 0
    for r in run.records:
        if r.get("its_per_sec", 0) > 0:
            steps += r["step"] - prev
            time += (r["step"] - prev) / r["its_per_sec"]
        prev = r["step"]
    return steps / time if time else float("nan")


def run_stats(run: Run, last_n: int) -> dict[str, float]:
    top1 = [r["top1"] for r in run.records]
    return {"steps": run.records[-1]["step"], "final": top1[-1], "best": max(top1),
            "last": statistics.mean(top1[-last_n:]), "its": its_per_sec(run)}


def summary_table(groups: list[Group], last_n: int = 5) -> str:
    """A row per run, then a mean ± std row per group of several seeds."""
    rows = []
    for g in groups:
        stats = [run_stats(r, last_n) for r in g.runs if r.records]
        for r, s in zip(g.runs, stats):
            rows.append([g.label, r.seed, s["steps"], f"{s['final']:.2f}", f"{s['best']:.2f}", f"{s['last']:.2f}",
                         f"{s['its']:.2f}"])
        if len(stats) > 1:
            col = {k: [s[k] for s in stats] for k in stats[0]}
            rows.append([f"**{g.label}**", f"{len(stats)} seeds", max(col["steps"]), mean_std(col["final"]),
                         mean_std(col["best"]), mean_std(col["last"]), mean_std(col["its"])])
    return markdown_table(["run", "seed", "steps", "final top-1", "best top-1", f"mean of last {last_n}",
                           "it/s"], rows)


def write_report(paths: Sequence[str | Path], out: str | Path, last_n: int = 5) -> list[Path]:
    """Plots and summary.md into `out`; returns the files written."""
    try:
        import matplotlib  # noqa: F401  (fail before writing anything)
    except ImportError:
        raise ValueError('fastssl report draws with matplotlib: pip install "fastssl[plots]"') from None
    runs = [read_run(p) for p in find_runs(paths)]
    groups = group_runs(runs)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    import matplotlib.pyplot as plt

    for metric in METRICS:
        if not any(curve(g, metric) for g in groups):
            continue
        fig = plot_metric(groups, metric)
        fig.savefig(out / f"{metric}.png")
        plt.close(fig)
        written.append(out / f"{metric}.png")
    runs_list = "\n".join(f"- {g.label}: " + ", ".join(str(r.path) for r in g.runs) for g in groups)
    (out / "summary.md").write_text(f"# fastssl report\n\n{summary_table(groups, last_n)}\n\nRuns:\n{runs_list}\n"
                                    + "".join(f"\n![{p.stem}]({p.name})\n" for p in written))
    return [*written, out / "summary.md"]


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="fastssl report", description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--out", default="report", help="folder for the PNGs and summary.md (default: ./report)")
    p.add_argument("--last-n", type=int, default=5, help="the mean of the last N evaluations (default 5)")
    args = p.parse_args(argv)
    for path in write_report(args.runs, args.out, args.last_n):
        print(path)
    return 0

