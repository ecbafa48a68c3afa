"""End-to-end train-step benchmark: fastssl vs a reference-style baseline vs the model-only ceiling, in one run.

    fastssl bench step --model wrn_28_2 --batch-size 64 --uratio 7 --json out.json

Systems (each does the same work per step: B labeled + μB weak + μB strong images through the same model):
  baseline  `fastssl/bench/baseline.py`: DataLoader workers with PIL RandAugment, eager fp32, boolean-indexed
            loss, `.item()` every step, Python-loop EMA with two load_state_dict (USB/TorchSSL style)
  fastssl   `fastssl.train.trainer.Trainer(cfg).run_steps(n)`: DALI views, the (compiled) step, EMA, state
  ceiling   the same model's forward + backward + SGD step on pre-made tensors of the same shapes (compiled,
            bf16 on CUDA, channels_last everywhere, as fastssl's defaults): what no data pipeline can beat
  fastssl_synth  (on request) the same Trainer on `--data.name=synthetic`: a few pre-made device batches, no
            DALI, so the trainer's own step (loss, EMA, algorithm state) is measured apart from the data path
Optional variants (--variants): fastssl_nocompile / ceiling_nocompile (compile off), and fastssl_compiled /
ceiling_compiled on CPU (compile forced on), to report step time with and without compile.

Steady-state speed: after `--warmup` steps (build and compile time reported separately), `--rounds` rounds
of `--chunk` steps per system, interleaved; medians, and ratios as medians of per-round ratios. On CUDA it
also counts host syncs per step (`torch.cuda.set_sync_debug_mode`) and peak memory per system. On every
device, systems that run eagerly also get `sync_ops_per_step`: the operators per step that would synchronise
on a GPU (`.item()`, boolean indexing, ...), traced by `fastssl.train.syncs.HostSyncTrace`.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings

import torch
import torch.nn.functional as F

from fastssl.bench import common
from fastssl.bench.baseline import BaselineTrainer

SYSTEMS = ("baseline", "fastssl", "ceiling")
VARIANTS = ("fastssl_nocompile", "ceiling_nocompile", "fastssl_compiled", "ceiling_compiled")
SYNTH = "fastssl_synth"


def build_model(name: str, image_size: int) -> torch.nn.Module:
    from fastssl.models import build_model as build  # the same registry the trainer uses

    return build(name, num_classes=10, in_channels=3, image_size=image_size)


class Ceiling:
    """Model-only step on fixed tensors: forward over (B + 2μB) images, CE, backward, SGD Nesterov, with
    fastssl's settings for the device (compile and bf16 on CUDA; a channels_last model everywhere, as the
    Trainer's, whose DDP buckets need the gradients in the weights' layout)."""

    def __init__(self, model_name: str, images_per_step: int, image_size: int, device: torch.device,
                 compile: bool, amp: bool, channels_last: bool, seed: int = 0):
        torch.manual_seed(seed)
        self.device = device
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        self.model = build_model(model_name, image_size).to(device, memory_format=fmt).train()
        # NHWC memory, as fastssl's DALI batches are on every device (an NCHW input made a cnn_small step
        # cost 1.37x more CPU time here: oneDNN's channels-last convolutions are faster)
        self.x = torch.randn(images_per_step, 3, image_size, image_size, device=device).to(
            memory_format=torch.channels_last)
        self.y = torch.randint(0, 10, (images_per_step,), device=device)
        fused = {"fused": True} if device.type == "cuda" else {}
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.03, momentum=0.9, nesterov=True,
                                   weight_decay=5e-4, **fused)
        self.amp = amp
        self.fwd = torch.compile(self.model) if compile else self.model

    def run_steps(self, n: int) -> None:
        for _ in range(n):
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
                loss = F.cross_entropy(self.fwd(self.x).float(), self.y)
            loss.backward()
            self.opt.step()
            self.opt.zero_grad(set_to_none=True)

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


class TimedBatches:
    """The Trainer's batch iterator, timed: host seconds blocked in each `next()` (the data path's share of a
    step as the step sees it; with DALI, the wait for the pipeline's outputs)."""

    def __init__(self, batches):
        self.batches, self.seconds = batches, []

    def __iter__(self):
        return self

    def __next__(self):
        t0 = time.perf_counter()
        batch = next(self.batches)
        self.seconds.append(time.perf_counter() - t0)
        return batch


def build_fastssl(args, npz_path: str | None, compile: str):
    """The Trainer on the benchmark's npz, or on synthetic batches of the same shapes when npz_path is None."""
    from fastssl.config import Config, apply_overrides
    from fastssl.train.trainer import Trainer

    data = ({"data.name": "npz", "data.root": npz_path} if npz_path else
            {"data.name": "synthetic", "data.image_size": args.image_size, "data.synthetic_samples": args.num_train})
    cfg = Config()
    apply_overrides(cfg, {
        "algo.name": args.algo, **data, "model.name": args.model,
        "data.batch_size": args.batch_size, "data.uratio": args.uratio, "data.num_labels": args.num_labels,
        "data.num_threads": args.dali_threads, "train.steps": args.horizon, "train.compile": compile,
        "train.progress": False, "train.seed": args.seed,
    })
    cfg.validate()
    trainer = Trainer(cfg)
    trainer._batches = TimedBatches(trainer._batches)  # the iterator train_step draws from
    return trainer, cfg.to_dict()


def build_system(name: str, args, ctx: dict):
    """Returns (system, config dict)."""
    dev, size, ims = ctx["device"], args.image_size, ctx["images_per_step"]
    cuda = dev.type == "cuda"
    if name == "baseline":
        if args.algo != "fixmatch":
            raise NotImplementedError(f"the baseline implements FixMatch only (got --algo {args.algo})")
        torch.manual_seed(args.seed)
        x, y, lb = ctx["x"], ctx["y"], ctx["lb_idx"]
        tr = BaselineTrainer(build_model(args.model, size), x[lb], y[lb], x, y, batch_size=args.batch_size,
                             uratio=args.uratio, workers=args.baseline_workers, total_steps=args.horizon,
                             device=dev, seed=args.seed)
        return tr, {"workers_per_loader": args.baseline_workers, "amp": False, "compile": False}
    if name == SYNTH:
        return build_fastssl(args, None, "auto")
    if name.startswith("fastssl"):
        compile = {"fastssl": "auto", "fastssl_nocompile": "off", "fastssl_compiled": "on"}[name]
        return build_fastssl(args, ctx["npz"], compile)
    compile = {"ceiling": cuda, "ceiling_nocompile": False, "ceiling_compiled": True}[name]
    c = Ceiling(args.model, ims, size, dev, compile=compile, amp=cuda, channels_last=True, seed=args.seed)
    return c, {"compile": compile, "amp": "bf16" if cuda else "off", "channels_last": True}


def count_syncs(system, n: int) -> float:
    """Host-device syncs per step, counted with torch's sync debug mode (CUDA only)."""
    system.sync()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            system.run_steps(n)
        finally:
            torch.cuda.set_sync_debug_mode(0)
    system.sync()
    return sum("synchroniz" in str(w.message) for w in caught) / n


def count_sync_ops(system, n: int) -> tuple[float, str]:
    """Operators per step that synchronise on a GPU (`fastssl.train.syncs`), traced on any device in eager
    mode: (count per step, where the first of each kind was called)."""
    from fastssl.train.syncs import HostSyncTrace

    system.sync()
    with HostSyncTrace() as trace:
        system.run_steps(n)
    system.sync()
    return trace.total / n, trace.report()


def sync_free(system, n: int) -> tuple[bool, str]:
    """Runs n steps with `set_sync_debug_mode("error")`: (True, "") if no step synchronised."""
    system.sync()
    torch.cuda.set_sync_debug_mode("error")
    try:
        system.run_steps(n)
        return True, ""
    except RuntimeError as e:
        return False, str(e).splitlines()[0][:300]
    finally:
        torch.cuda.set_sync_debug_mode(0)
        system.sync()


def profile_steps(system, n: int, path: str) -> str:
    """A torch.profiler trace of n steps, gzipped Chrome JSON (open in Perfetto)."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    system.sync()
    with profile(activities=acts, record_shapes=False) as prof:
        system.run_steps(n)
        system.sync()
    common.write_json(path, {})  # creates the folder
    prof.export_chrome_trace(path)  # a .gz name is written gzipped
    return path


def parse_args(argv):
    p = argparse.ArgumentParser(prog="fastssl bench step", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--algo", default="fixmatch")
    p.add_argument("--model", default="cnn_small", help="cnn_small, wrn_28_2, ...")
    p.add_argument("--batch-size", type=int, default=16, help="labeled batch B (global)")
    p.add_argument("--uratio", type=int, default=7, help="μ: unlabeled per labeled")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--data", default="auto", help="auto (CIFAR-10 when present and size 32, else random), random, or an .npz")
    p.add_argument("--num-train", type=int, default=50000, help="images used (random data: how many to make)")
    p.add_argument("--num-labels", type=int, default=4000, help="labeled subset (class-balanced)")
    p.add_argument("--systems", default=",".join(SYSTEMS), help=f"comma list of {SYSTEMS + VARIANTS + (SYNTH,)}")
    p.add_argument("--variants", action="store_true", help="also run the compile on/off variants")
    p.add_argument("--warmup", type=int, default=5, help="steps per system before timing (compile happens here)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--chunk", type=int, default=10, help="steps per timed chunk")
    p.add_argument("--settle", type=int, default=2,
                   help="untimed steps before each chunk, to use up batches prefetched in other systems' time")
    p.add_argument("--baseline-workers", type=int, default=1, help="DataLoader workers per loader (USB: 1)")
    p.add_argument("--dali-threads", type=int, default=2)
    p.add_argument("--threads", type=int, default=1,
                   help="torch intra-op threads in this process (CPU). 1 by default: on a shared 2-core "
                        "machine 2 threads made a cnn_small step 25x slower (OpenMP threads waiting on a "
                        "descheduled peer)")
    p.add_argument("--horizon", type=int, default=1 << 20, help="schedule length K given to every system")
    p.add_argument("--sync-steps", type=int, default=5,
                   help="steps traced for operators that sync (eager systems), and run under CUDA's sync debug mode")
    p.add_argument("--profile", default=None,
                   help="folder: write a torch.profiler trace (<system>_trace.json.gz) of fastssl's steps "
                        "(fastssl_synth's when fastssl is not run)")
    p.add_argument("--profile-steps", type=int, default=5, help="steps in the profiler trace")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda")
    p.add_argument("--json", default=None, help="write the results here")
    p.add_argument("--strict", action="store_true", help="exit 1 if any requested system fails to run")
    return p.parse_args(argv)


def run(args) -> dict:
    dev = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                       (args.device if args.device != "auto" else "cpu"))
    torch.set_num_threads(args.threads)
    from fastssl.train.trainer import configure_backends

    configure_backends(dev)  # process-wide (cuDNN autotuning on CUDA): every system runs with what fastssl sets
    names = [s for s in args.systems.split(",") if s]
    if args.variants:
        names += ["fastssl_nocompile", "ceiling_nocompile"] if dev.type == "cuda" else \
                 ["fastssl_compiled", "ceiling_compiled"]
    bad = [s for s in names if s not in SYSTEMS + VARIANTS + (SYNTH,)]
    if bad:
        raise SystemExit(f"unknown system(s) {bad}; choose from {SYSTEMS + VARIANTS + (SYNTH,)}")
    x, y, source = common.load_images(args.data, args.image_size, args.num_train, args.seed)
    ims = args.batch_size * (1 + 2 * args.uratio)
    ctx = {"device": dev, "x": x, "y": y, "images_per_step": ims,
           "lb_idx": common.balanced_labeled(y, min(args.num_labels, len(y)), args.seed)}
    npz, cleanup = common.npz_for_fastssl(x, y, source) if any(n.startswith("fastssl") and n != SYNTH
                                                               for n in names) else (None, lambda: None)
    ctx["npz"] = npz
    result = {"env": common.environment(),
              "setup": {"algo": args.algo, "model": args.model, "batch_size": args.batch_size,
                        "uratio": args.uratio, "image_size": args.image_size, "images_per_step": ims,
                        "device": str(dev), "warmup": args.warmup, "rounds": args.rounds, "chunk": args.chunk,
                        "settle": args.settle, "threads": args.threads,
                        "data_source": source, "num_train": len(x), "num_labels": int(len(ctx["lb_idx"]))},
              "systems": {}, "ratios": {}, "cpu_ratios": {}}
    live, errors = {}, {}
    try:
        for name in names:
            entry = result["systems"].setdefault(name, {})
            try:
                t0 = time.perf_counter()
                system, cfg = build_system(name, args, ctx)
                entry["config"] = cfg
                entry["build_s"] = time.perf_counter() - t0
                t0 = time.perf_counter()
                system.run_steps(args.warmup)
                system.sync()
                entry["warmup_s"] = time.perf_counter() - t0
                if name.startswith("fastssl"):
                    system._batches.seconds.clear()  # count the timed steps only
                live[name] = system
            except Exception as e:  # noqa: BLE001 - one system failing (e.g. fastssl not landed) is reported
                errors[name] = entry["error"] = f"{type(e).__name__}: {e}"
                print(f"[bench_step] {name}: not run: {entry['error']}", file=sys.stderr)
        per_step, cpu_per_step = common.interleaved(live, args.rounds, args.chunk, args.settle)
        for name, secs in per_step.items():
            e = result["systems"][name]
            e.update(common.summarize(secs, ims, cpu_per_step[name]))
            # warm-up time beyond what the same steps cost in steady state: build-time compile, first batches
            e["warmup_overhead_s"] = e["warmup_s"] - args.warmup * e["step_ms_median"] / 1e3
            if name.startswith("fastssl"):  # settle steps included: every step of the interleaved rounds
                waits = live[name]._batches.seconds
                e["next_ms_per_step_median"] = 1e3 * statistics.median(waits)
                e["next_ms_per_step_mean"] = 1e3 * statistics.fmean(waits)
        for name, system in live.items():
            e = result["systems"][name]
            # fastssl: the Trainer's own decision; baseline and ceiling: their config's
            if getattr(system, "compiled", e["config"].get("compile")):
                continue  # a dispatch-mode trace would run the compiled step differently; CUDA counts below
            try:
                e["sync_ops_per_step"], e["sync_ops"] = count_sync_ops(system, args.sync_steps)
            except Exception as err:  # noqa: BLE001 - keep the timings already measured
                e["check_error"] = f"{type(err).__name__}: {err}"
        if dev.type == "cuda":
            for name, system in live.items():
                e = result["systems"][name]
                try:
                    torch.cuda.reset_peak_memory_stats(dev)
                    base = torch.cuda.memory_allocated(dev)
                    e["syncs_per_step"] = count_syncs(system, args.sync_steps)
                    # torch's allocator only: DALI's own GPU buffers are not included
                    e["peak_mem_gib_above_resident"] = (torch.cuda.max_memory_allocated(dev) - base) / 2**30
                    if name.startswith("fastssl"):
                        e["sync_free"], e["sync_error"] = sync_free(system, args.sync_steps)
                except Exception as err:  # noqa: BLE001 - keep the timings already measured
                    e["check_error"] = f"{type(err).__name__}: {err}"
        traced = next((n for n in ("fastssl", SYNTH) if n in live), None)
        if args.profile and traced:
            try:
                result["profile_trace"] = profile_steps(live[traced], args.profile_steps,
                                                        f"{args.profile.rstrip('/')}/{traced}_trace.json.gz")
            except Exception as err:  # noqa: BLE001
                result["profile_trace"] = f"failed: {type(err).__name__}: {err}"
        for a, b in (("fastssl", "baseline"), ("fastssl", "ceiling"), ("ceiling", "baseline"),
                     (SYNTH, "ceiling"), (SYNTH, "baseline"), ("fastssl", SYNTH),
                     ("fastssl", "fastssl_nocompile"), ("fastssl_compiled", "fastssl"),
                     ("ceiling", "ceiling_nocompile"), ("ceiling_compiled", "ceiling")):
            if a in per_step and b in per_step:
                result["ratios"][f"{a}/{b}"] = common.paired_ratio(per_step[a], per_step[b])
                result["cpu_ratios"][f"{a}/{b}"] = common.paired_ratio(cpu_per_step[a], cpu_per_step[b])
    finally:
        for system in live.values():
            if hasattr(system, "close"):
                system.close()
        cleanup()
    result["peak_rss_gib_main_process"] = common.peak_rss_gib()
    result["errors"] = errors
    return result


def report(result: dict) -> str:
    s = result["setup"]
    lines = [f"{s['algo']} {s['model']} B={s['batch_size']} mu={s['uratio']} {s['image_size']}px "
             f"({s['images_per_step']} img/step) on {s['device']}; data: {s['data_source']}",
             f"{'system':<20}{'it/s':>10}{'img/s':>10}{'ms/step':>10}{'[q1, q3]':>18}{'CPU ms/step':>12}"
             f"{'warmup s':>10}"]
    for name, e in result["systems"].items():
        if "it_s" not in e:
            lines.append(f"{name:<20}  not run: {e.get('error', '?')}")
            continue
        extra = f"  syncs/step={e['syncs_per_step']:.1f}" if "syncs_per_step" in e else ""
        if "sync_ops_per_step" in e:
            extra += f"  sync-ops/step={e['sync_ops_per_step']:.1f}"
        if "next_ms_per_step_median" in e:
            extra += f"  next()={e['next_ms_per_step_median']:.2f} ms/step"
        lines.append(f"{name:<20}{e['it_s']:>10.2f}{e['img_s']:>10.0f}{e['step_ms_median']:>10.1f}"
                     f"{'[%.1f, %.1f]' % (e['step_ms_q1'], e['step_ms_q3']):>18}{e['cpu_ms_per_step_median']:>12.1f}"
                     f"{e['warmup_s']:>10.1f}{extra}")
    for k, v in result["ratios"].items():
        cpu = result["cpu_ratios"][k]
        lines.append(f"ratio {k} = {v:.2f}x wall, {cpu:.2f}x CPU time (medians of per-round ratios; "
                     f">1: the first is faster / cheaper)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    result = run(args)
    print(report(result))
    if args.json:
        common.write_json(args.json, result)
        print(f"wrote {args.json}")
    return 1 if args.strict and result["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
