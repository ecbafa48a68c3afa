"""The training loop: batch → compiled step → optimizer → EMA → algorithm state; log, eval, checkpoint.

Read top to bottom; there are no hooks. The only host syncs are in `_read_metrics` (every `log_every`
steps), `evaluate` and `save` — each marked `# host sync` — plus, under torchrun, the ranks' agreement on a
stop signal at the same `log_every` points (faults.StopOnSignal.requested).
"""
from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from fastssl.algorithms import get_algorithm
from fastssl.config import Config
from fastssl.data.build import build_data
from fastssl.data.splits import check_same_split, save_split, split_state
from fastssl.kernels import load_triton
from fastssl.models import build_model
from fastssl.train import checkpoint as ckpt_io
from fastssl.train import faults, runlock
from fastssl.collectives import all_reduce_sum, is_dist
from fastssl.train.distributed import init_from_env
from fastssl.train.ema import EMATeacher
from fastssl.train.loggers import open_loggers
from fastssl.train.metrics import Progress, Stopwatch, topk_correct
from fastssl.train.optim import build_optimizer, load_optimizer_state, lr_at, lr_tensor, unwrapped_step
from fastssl.train.provenance import provenance


def configure_backends(device: torch.device) -> None:
    """Backend switches for this run's device. On CUDA, cuDNN benchmarks each convolution's algorithms once
    and reuses the fastest: every shape in the step (and in evaluation, padded to full batches) is static,
    so the search is paid once, at warm-up."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True


class TrainStep(nn.Module):
    """Model and algorithm as one module, so DDP all-reduces the gradients of both (ReMixMatch's rotation head
    is the algorithm's) and the algorithm can call any of the raw model's methods (`forward_features`, `head`)
    inside DDP's forward. The EMA teacher is an argument, not a submodule: DDP must not treat it as trained."""

    def __init__(self, model: nn.Module, algorithm: nn.Module):
        super().__init__()
        self.model = model
        self.algorithm = algorithm

    def forward(self, teacher, batch, step_t):
        return self.algorithm(self.model, teacher, batch, step_t)


class Trainer:
    compile_backend: str = "inductor"
    """torch.compile backend of the step: a name, or a backend object (a plain function here would be bound as
    a method); the CPU tests trace with "aot_eager" (the same graphs, no code generation)"""

    def __init__(self, cfg: Config, *, build_train: bool = True, split: dict | None = None):
        """`build_train=False`: the eval loader only (`fastssl eval`), with `split`, a checkpoint's split
        state, standing for the labeled split instead of making it again."""
        self.cfg = cfg.validate()
        t = cfg.train
        self.rank, self.world, self.device = init_from_env()
        cuda = self.device.type == "cuda"
        configure_backends(self.device)
        self.amp = t.amp == "bf16" or (t.amp == "auto" and cuda)
        # auto = on: the batches are NHWC in memory on every device, and a model in another layout gets some
        # gradients in the batches' layout, which DDP then copies into its buckets stride by stride every step
        self.channels_last = t.channels_last != "off"
        self.compiled = t.compile == "on" or (t.compile == "auto" and cuda)
        if not cuda:  # OpenMP threads that outnumber the free cores spin against DALI's workers
            free = (os.cpu_count() or 1) // self.world - cfg.data.num_threads
            torch.set_num_threads(t.cpu_threads or max(1, free))
        algo_cls = get_algorithm(cfg.algo_name)
        resume = runlock.claim_check(t.out, t.resume, check=build_train and self.rank == 0)  # before the data

        self.data = build_data(cfg.data, cfg.aug, algo_cls.views, seed=t.seed, rank=self.rank, world=self.world,
                               device=self.device, build_train=build_train, split=split)
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format

        def make_model() -> nn.Module:
            """A fresh network of the run's architecture, on the device, in the step's memory format: the
            student, and any network an algorithm owns (MPL's teacher)."""
            return build_model(cfg.model.name, num_classes=self.data.num_classes, in_channels=self.data.in_channels,
                               image_size=self.data.image_size, pretrained=cfg.model.pretrained
                               ).to(self.device, memory_format=fmt)

        torch.manual_seed(t.seed)  # identical initial weights on every rank
        self.model = make_model()
        # Before the optimizer, DDP and compile: the EMA may re-point parameters into one flat buffer.
        self.ema = EMATeacher(self.model)
        self.algorithm = algo_cls(cfg.algo, num_classes=self.data.num_classes, num_ulb=self.data.num_ulb,
                                  total_steps=t.steps, num_features=self.model.num_features,
                                  make_model=make_model).to(self.device)
        self.optimizer = build_optimizer([self.model, self.algorithm], cfg.optim, self.device, compiled=self.compiled)
        self.net = TrainStep(self.model, self.algorithm)
        if is_dist():
            # broadcast_buffers=False: BN statistics are made identical at each eval/checkpoint instead
            # (_sync_buffers), and the algorithms keep their own buffers identical by gathering their updates,
            # so nothing is broadcast per step (FlexMatch's per-sample state alone is 8 bytes × |unlabeled set|).
            self.net = DDP(self.net, device_ids=[self.device] if cuda else None, broadcast_buffers=False)
        if self.compiled and cuda:
            load_triton()  # the CUDA step dispatches to the Triton kernels: import them now, not under Dynamo
        self.ema_decay = torch.tensor(t.ema_decay, device=self.device)
        self.step = 0
        self.step_t = torch.zeros((), dtype=torch.long, device=self.device)  # 0-d: schedules never recompile
        self.lr = self.optimizer.param_groups[0]["lr"]  # 0-d, shared by the groups, written by the step
        self._optimizer_step = unwrapped_step(self.optimizer)
        self.history: list[dict[str, Any]] = []
        self._metric_keys: list[str] | None = None
        self._metric_sum: torch.Tensor | None = None
        self.cudagraphs = self.compiled and t.compile_mode == "reduce-overhead"
        self.forward, self.after_backward = self._forward, self._after_backward
        if self.compiled:
            self._compile(t.compile_mode)
        self._metric_count = 0
        self._interval = {"loss": 0.0, "n": 0, "train_time": 0.0}
        torch.manual_seed(t.seed + 1 + self.rank)  # per-rank stream for the algorithms' own randomness
        self._batches = iter(self.data.train) if build_train else None
        self.ctaugment = getattr(self.data.train, "ctaugment", None)  # --aug.policy=ctaugment: learnt op weights
        self.out_dir: Path | None = Path(t.out) if t.out else None
        if resume:
            self._resume(ckpt_io.load_checkpoint(resume))

    # --- one step -------------------------------------------------------------------------------------
    def _compile(self, mode: str) -> None:
        """The step as two compiled functions, each one graph (fullgraph: a graph break fails loudly):
        `forward` (the algorithm's forward and loss; AOTAutograd also compiles its backward, which
        `loss.backward()` runs) and `after_backward` (lr, optimizer, EMA, algorithm state, metric sums).
        Under DDP the DDP module itself is compiled instead of `_forward` (Dynamo cannot trace into DDP's
        Python forward; compiling the DDP module lets it run that eagerly and split the model's graph at
        the gradient buckets, so the all-reduces overlap the backward): one forward graph per bucket.
        Everything `after_backward` writes in place is marked a static address, so CUDA graphs
        (reduce-overhead) replay into it instead of copying it; the batch, whose tensors move every step
        (DALI's buffers), is copied into the graphs' own input buffers."""
        opts = {"backend": self.compile_backend, **({} if mode == "default" else {"mode": mode})}
        for t in [self.step_t, self.lr, self.ema_decay, *self.ema.flat_buffers(), *self.algorithm.buffers()]:
            self._static(t)
        if isinstance(self.net, DDP):
            self.net = torch.compile(self.net, **opts)
        else:
            self.forward = torch.compile(self._forward, fullgraph=True, **opts)
        self.after_backward = torch.compile(self._after_backward, fullgraph=True, **opts)

    def _static(self, t: torch.Tensor) -> torch.Tensor:
        if self.compiled:
            torch._dynamo.mark_static_address(t)
        return t

    def _forward(self, batch, step_t):
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            return self.net(self.ema.module, batch, step_t)

    @torch.no_grad()
    def _after_backward(self, batch, loss, metrics, state) -> None:
        """The step after `backward`, but for zero_grad: lr, optimizer, EMA, algorithm state, step, metric sums."""
        self.lr.copy_(lr_tensor(self.step_t, self.cfg.train.steps, self.cfg.optim))
        self._optimizer_step()
        self.ema.update(self.ema_decay)
        self.algorithm.update_state(batch, state)
        self.step_t += 1
        self._metric_sum += torch.stack([loss.float(), *(v.float() for v in metrics.values())])

    def train_step(self) -> None:
        batch = next(self._batches)
        if self.cudagraphs:  # a new step: the previous step's graph outputs are dead, their memory reusable
            torch.compiler.cudagraph_mark_step_begin()
        out = self.forward(batch, self.step_t)
        out.loss.backward()
        if self._metric_sum is None:  # first step: the metric names are known now
            self._metric_keys = ["loss", *out.metrics]
            self._metric_sum = self._static(torch.zeros(len(self._metric_keys), device=self.device))
        self.after_backward(batch, out.loss.detach(), out.metrics, out.state)
        self.optimizer.zero_grad(set_to_none=True)  # host-only (drops references); Dynamo refuses to trace it
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            self.algorithm.after_step(self.model, batch, out.state)  # eager, outside the compiled step (MPL's teacher)
        if self.ctaugment is not None:  # CTAugment learns its weights from the labeled probe view (host sync)
            self.ctaugment.probe_step(self.model, batch.x_lb_s, batch.y_lb, self.data.train.probe_bins())
        self.step += 1
        self._metric_count += 1

    def run_steps(self, n: int) -> None:
        """n full training steps (no eval, logging or checkpoints): what the benchmarks time."""
        for _ in range(n):
            self.train_step()

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _read_metrics(self) -> dict[str, float]:
        """Means of the step metrics since the last read, averaged over ranks."""
        if not self._metric_count:
            return {}
        sums = all_reduce_sum(self._metric_sum) / (self._metric_count * self.world)
        means = dict(zip(self._metric_keys, sums.tolist()))  # host sync (once every log_every steps)
        faults.check_metrics(means, self.step, self.out_dir)
        self._interval["loss"] += means["loss"] * self._metric_count
        self._interval["n"] += self._metric_count
        self._metric_sum.zero_()
        self._metric_count = 0
        return means

    @torch.no_grad()
    def _sync_buffers(self) -> None:
        """BatchNorm statistics from rank 0 into every rank's student and teacher.

        Every rank updates its running statistics with its own shard, so between evaluations they differ
        slightly. Before an evaluation or a checkpoint, rank 0's are made the truth everywhere, so every rank
        evaluates the same teacher and a resumed run starts from what was saved."""
        if is_dist():
            for module in (self.model, self.ema.module):
                for b in module.buffers():
                    dist.broadcast(b, src=0)

    # --- evaluation -------------------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Top-1/top-5 of the EMA teacher on the test set, counted on every rank's shard and summed."""
        self._sync_buffers()
        model = self.ema.module.eval()
        counts = torch.zeros(3, dtype=torch.long, device=self.device)
        for x, y, valid in self.data.eval:
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
                logits = model(x)
            counts[:2] += topk_correct(logits.float(), y, valid)
            counts[2] += valid.sum()
        top1, top5, n = all_reduce_sum(counts).tolist()  # host sync (once per eval)
        return {"top1": 100.0 * top1 / n, "top5": 100.0 * top5 / n, "eval_samples": n}

    # --- the run ----------------------------------------------------------------------------------------
    def fit(self) -> dict[str, Any]:
        """Trains to --train.steps, holding the run directory's lock. A signal or divergence ends it early with a
        faults.RunError (after a checkpoint, or naming the last good one)."""
        if self.rank == 0 and self.out_dir is None:
            self.out_dir = runlock.default_out_dir(self.cfg.algo_name, self.cfg.data.name)
        with runlock.RunLock(self.out_dir) if self.rank == 0 else contextlib.nullcontext(), \
                faults.StopOnSignal() as stop:
            return self._fit(stop)

    def _fit(self, stop: faults.StopOnSignal) -> dict[str, Any]:
        t = self.cfg.train
        main = self.rank == 0
        if main:
            self._prepare_out_dir()
        self.loggers = open_loggers(t.loggers if main else (), self.out_dir, self.cfg.to_dict())
        if main:
            print(f"fastssl: {self.cfg.algo_name} on {self.cfg.data.name} ({self.data.num_lb} labeled, "
                  f"{self.data.num_ulb} unlabeled), {self.cfg.model.name}, {self.world} rank(s) on {self.device}, "
                  f"compile={'on' if self.compiled else 'off'}, bf16={'on' if self.amp else 'off'}; "
                  f"steps {self.step}→{t.steps}; writing {self.out_dir}", flush=True)
        last = {}
        watch = Stopwatch()  # training time: evaluations and checkpoints are paused out of it and of the it/s
        progress = Progress(t.steps, start=self.step, enabled=main and t.progress, clock=watch)
        while self.step < t.steps:
            self.train_step()
            s = self.step
            if s % t.log_every == 0 or s == t.steps:
                last = self._read_metrics()
                self.loggers.log(s, last, "train")
                progress.update(s, {"loss": last["loss"], **({"mask": last["mask_ratio"]} if "mask_ratio" in last else {}),
                                    **({"top1": self.history[-1]["top1"]} if self.history else {})})
            evaluate = s % t.eval_every == 0 or s == t.steps
            checkpoint = (t.ckpt_every and s % t.ckpt_every == 0) or s == t.steps
            if evaluate or checkpoint:
                self.sync()  # the queued steps count as training, not as the evaluation that waits for them
                self._interval["train_time"] += watch.pause()
                if evaluate:
                    self._read_metrics()
                    self._record_eval(self.evaluate(), last)
                if checkpoint:
                    self.save()
                watch.start()
            if s < t.steps and (signum := stop.requested(s % t.log_every == 0, self.device)):
                raise self._preempted(signum)
        progress.close()
        self.loggers.close()
        summary = self.summary()
        if main:
            (self.out_dir / "summary.json").write_text(faults.strict_json(summary, indent=2))
            print("fastssl: done. " + json.dumps(summary), flush=True)
        return summary

    def _record_eval(self, ev: dict[str, float], last: dict[str, float]) -> None:
        iv = self._interval
        steps = self.step - iv.get("step0", 0)
        rec = {"step": self.step, **ev,
               "its_per_sec": steps / iv["train_time"] if iv["train_time"] > 0 else 0.0,
               "loss": iv["loss"] / iv["n"] if iv["n"] else float("nan"),
               "lr": lr_at(self.step - 1, self.cfg.train.steps, self.cfg.optim),
               **{k: v for k, v in last.items() if k != "loss"}}
        self.history.append(rec)
        rec["best_top1"] = max(h["top1"] for h in self.history)
        n = self.cfg.train.last_n
        rec[f"mean_last{n}_top1"] = sum(h["top1"] for h in self.history[-n:]) / len(self.history[-n:])
        self._interval = {"loss": 0.0, "n": 0, "train_time": 0.0, "step0": self.step}
        if self.rank == 0:
            with open(self.out_dir / "metrics.jsonl", "a") as f:
                f.write(faults.strict_json(rec) + "\n")
            self.loggers.log(self.step, rec, "eval")

    def summary(self) -> dict[str, Any]:
        if not self.history:
            return {"step": self.step}
        last, n = self.history[-1], self.cfg.train.last_n
        return {"step": self.step, "top1": last["top1"], "top5": last["top5"], "best_top1": last["best_top1"],
                f"mean_last{n}_top1": last[f"mean_last{n}_top1"], "its_per_sec": last["its_per_sec"],
                "out": str(self.out_dir)}

    def _prepare_out_dir(self) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        meta = {"config": self.cfg.to_dict(), **provenance(self.device), "world_size": self.world}
        (self.out_dir / "config.json").write_text(json.dumps(meta, indent=2, default=str))
        save_split(self.out_dir / "split.npz", self.data.split, self.data.split_meta)
        # On resume, evaluations after the checkpoint's step are about to be redone: drop them.
        mpath = self.out_dir / "metrics.jsonl"
        kept = [h for h in self.history if h["step"] <= self.step]
        mpath.write_text("".join(faults.strict_json(h) + "\n" for h in kept))

    # --- checkpoints -----------------------------------------------------------------------------------
    def _rank_state(self) -> dict[str, Any]:
        return {"loader": self.data.train.state_dict(), "rng": ckpt_io.rng_state()}

    def save(self) -> Path | None:
        """Every rank contributes its pipeline position and RNG; rank 0 writes one file atomically."""
        self._sync_buffers()
        faults.check_weights([self.model, self.ema.module], self.step, self.out_dir)  # never save NaNs
        per_rank = [None] * self.world
        if is_dist():
            dist.all_gather_object(per_rank, self._rank_state())  # host sync (checkpoint only)
        else:
            per_rank[0] = self._rank_state()
        if self.rank != 0:
            return None
        state = {
            "model": self.model.state_dict(), "ema": self.ema.state_dict(), "optimizer": self.optimizer.state_dict(),
            "algorithm": self.algorithm.state_dict(), "step": self.step, "history": self.history,
            "metric_interval": self._interval, "world_size": self.world,
            "loader": [r["loader"] for r in per_rank], "rng": [r["rng"] for r in per_rank],
            "config": self.cfg.to_dict(), "split": split_state(self.data.split, self.data.split_meta),
            "ctaugment": self.ctaugment and self.ctaugment.state_dict(),  # identical on every rank
        }
        path = self.out_dir / f"ckpt-{self.step}.pt"
        ckpt_io.save_atomic(state, path)
        ckpt_io.prune(self.out_dir)
        return path

    def _preempted(self, signum: int) -> faults.Preempted:
        """Folds the partial metrics interval into the state, then checkpoints this step (unless just done)."""
        t = self.cfg.train
        self._read_metrics()
        saved = t.ckpt_every and self.step % t.ckpt_every == 0
        path = self.save() if not saved else self.out_dir and self.out_dir / f"ckpt-{self.step}.pt"
        return faults.Preempted(signum, self.step, path)

    def _resume(self, ck: dict[str, Any]) -> None:
        bad = ckpt_io.config_mismatches(ck["config"], self.cfg.to_dict())
        if bad:
            raise ValueError(f"checkpoint {ck['path']} was written with a different config; refusing to resume:\n  "
                             + "\n  ".join(bad) + "\nresume with the same options (or start a new run without --train.resume)")
        if ck["world_size"] != self.world:
            raise ValueError(f"checkpoint {ck['path']} was written by {ck['world_size']} rank(s), this run has "
                             f"{self.world}; resume with --nproc_per_node={ck['world_size']}")
        check_same_split(ck["split"], self.data.split, self.data.split_meta, f"checkpoint {ck['path']}")
        self.model.load_state_dict(ck["model"])
        self.ema.load_state_dict(ck["ema"])
        load_optimizer_state(self.optimizer, ck["optimizer"])
        self.algorithm.load_state_dict(ck["algorithm"])
        self.step = ck["step"]
        self.step_t.fill_(self.step)
        self.history = ck["history"]
        self._interval = ck["metric_interval"]
        if self._batches is not None:
            self.data.train.load_state_dict(ck["loader"][self.rank])
            self._batches = iter(self.data.train)
        if self.ctaugment is not None:
            self.ctaugment.load_state_dict(ck["ctaugment"])
        ckpt_io.set_rng_state(ck["rng"][self.rank])
        if self.out_dir is None:
            self.out_dir = Path(ck["path"]).parent
