"""Markdown tables from benchmark JSON files (for benchmarks/RESULTS.md and the README).

    fastssl bench summarize benchmarks/results/cpu/*.json
"""
from __future__ import annotations

import json
import sys
from pathlib import Path


def _env(e: dict) -> str:
    hw = e["gpu"] or f"{e['cpu']} ({e['cpu_count']} cores, load {e['load_avg_1m_at_start']:.1f})"
    return f"{e['date_utc'][:16]}Z, {hw}, torch {e['torch']}, DALI {e['dali']}, git {e['git_sha'][:10]}"


def step_table(r: dict) -> str:
    s = r["setup"]
    out = [f"**{s['algo']} {s['model']}, B={s['batch_size']}, μ={s['uratio']}, {s['image_size']}px "
           f"({s['images_per_step']} images/step), {s['device']}** — {_env(r['env'])}; data: {s['data_source']}; "
           f"{s['rounds']} rounds × {s['chunk']} steps, interleaved",
           "",
           "| system | it/s | img/s | ms/step (median [q1, q3]) | CPU ms/step | warm-up s |",
           "|---|---|---|---|---|---|"]
    for name, e in r["systems"].items():
        if "it_s" not in e:
            out.append(f"| {name} | not run: {e.get('error', '?')} | | | | |")
            continue
        out.append(f"| {name} | {e['it_s']:.2f} | {e['img_s']:.0f} | {e['step_ms_median']:.0f} "
                   f"[{e['step_ms_q1']:.0f}, {e['step_ms_q3']:.0f}] | {e['cpu_ms_per_step_median']:.0f} | "
                   f"{e['warmup_s']:.1f} |")
    return "\n".join(out + _ratio_rows(r))


def _ratio_rows(r: dict) -> list[str]:
    """The wall/CPU ratio table a bench JSON carries (`ratios`, `cpu_ratios`), after a blank line."""
    return ["", "| ratio | wall time | CPU time |", "|---|---|---|"] + [
        f"| {k} | {v:.2f}× | {r['cpu_ratios'][k]:.2f}× |" for k, v in r["ratios"].items()]


def pipeline_table(r: dict) -> str:
    s = r["setup"]
    out = [f"**pipelines, B={s['batch_size']}, μ={s['uratio']} ({s['views_per_batch']} views/batch), "
           f"{s['device']}** — {_env(r['env'])}; data: {s['data_source']}",
           "", "| loader | views/s | ms/batch | views per CPU-second |", "|---|---|---|---|"]
    for name, e in r["loaders"].items():
        out.append(f"| {name} | {e['views_s']:.0f} | {e['batch_ms_median']:.0f} | {e['views_per_cpu_s']:.0f} |")
    for name, err in r.get("errors", {}).items():
        out.append(f"| {name} | not run: {err} | | |")
    return "\n".join(out + _ratio_rows(r))


def scaling_table(r: dict) -> str:
    s = r["setup"]
    out = [f"**scaling, {s['model']}, global B={s['global_batch_size']}, μ={s['uratio']}, {s['device']}** — "
           f"{_env(r['env'])}; launches in order {s['order']}",
           "", "| processes | it/s | img/s | speed-up | efficiency |", "|---|---|---|---|---|"]
    for n, e in r["by_world_size"].items():
        out.append(f"| {n} | {e['it_s']:.2f} | {e['img_s']:.0f} | {e['speedup_vs_min']:.2f}× | {e['efficiency']:.2f} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    for path in (sys.argv[1:] if argv is None else argv):
        r = json.loads(Path(path).read_text())
        table = (step_table if "systems" in r else pipeline_table if "loaders" in r else scaling_table)(r)
        print(f"{table}\n\n(`{r['env']['command']}` → `{path}`)\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
