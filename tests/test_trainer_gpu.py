"""The trainer on CUDA (skipped without a GPU; run on the lent GPU): compiled, bf16, channels_last, and no host
sync inside the steady-state step. The `synthetic` tests need no DALI (phase A of scripts/gpu_check.sh); the
others read the default dataset through DALI's GPU pipelines and skip where DALI is not installed."""
import pytest
import torch

from fastssl.config import Config, apply_overrides
from fastssl.train.trainer import Trainer

pytestmark = pytest.mark.gpu


def gpu_cfg(out, **extra):
    cfg = Config()
    apply_overrides(cfg, {"data.batch_size": 32, "data.uratio": 7, "train.steps": 20, "train.eval_every": 20,
                          "train.log_every": 10, "train.progress": False, "train.out": str(out), **extra})
    return cfg


def synthetic_cfg(out, **extra):
    """CIFAR-shaped synthetic batches (no DALI), the small CNN: quick to compile."""
    return gpu_cfg(out, **{"data.name": "synthetic", "data.num_labels": 40, "model.name": "cnn_small", **extra})


def _steps_syncfree(tr: Trainer, n: int) -> None:
    tr.sync()
    torch.cuda.set_sync_debug_mode("error")
    try:
        tr.run_steps(n)  # any .item()/.tolist()/implicit sync in the step raises here
    finally:
        torch.cuda.set_sync_debug_mode(0)


def test_synthetic_compiled_bf16_step_never_syncs(tmp_path):
    tr = Trainer(synthetic_cfg(tmp_path))
    assert tr.compiled and tr.amp and tr.channels_last and torch.backends.cudnn.benchmark
    tr.run_steps(3)  # warm-up: compilation, cuDNN autotuning, allocator
    _steps_syncfree(tr, 5)


def test_synthetic_compiled_step_equals_eager(tmp_path, monkeypatch):
    """The compiled fp32 step (inductor, the Triton loss inside the graph) against the eager one on the same
    batches, TF32 off: the same losses, and the same parameter updates over 3 steps. τ=0.05 puts every
    unlabeled sample through the pseudo-label loss. Updates are compared in norm: on noise images through an
    untrained net, BatchNorm's backward subtracts nearly equal terms, so summation order alone moves single
    gradient entries by percents (measured on CPU: up to 3% of a conv weight's largest gradient entry)."""
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    runs = {}
    for compile in ("on", "off"):
        tr = Trainer(synthetic_cfg(tmp_path / compile, **{"train.compile": compile, "train.amp": "off",
                                                          "algo.tau": 0.05}))
        start = [p.detach().clone() for p in tr.model.parameters()]
        losses = []
        for _ in range(3):
            tr.train_step()
            losses.append(tr._metric_sum.clone())  # running sums of loss and metrics
        updates = [p.detach() - p0 for p, p0 in zip(tr.model.parameters(), start)]
        runs[compile] = torch.stack(losses), updates
    (m_on, u_on), (m_off, u_off) = runs["on"], runs["off"]
    torch.testing.assert_close(m_on, m_off, rtol=1e-4, atol=1e-5)
    assert m_off[-1, 1:].abs().sum() > 0  # the unlabeled loss and mask took part
    for a, b in zip(u_on, u_off):
        assert (a - b).norm() <= 0.05 * b.norm(), ((a - b).norm().item(), b.norm().item())


def test_compiled_bf16_step_never_syncs(tmp_path):
    pytest.importorskip("nvidia.dali", reason="DALI not installed (phase B of scripts/gpu_check.sh carries it)")
    tr = Trainer(gpu_cfg(tmp_path))
    assert tr.compiled and tr.amp and tr.channels_last and tr.device.type == "cuda"
    tr.run_steps(5)  # warm-up: compilation, DALI start-up, allocator
    _steps_syncfree(tr, 5)
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in tr.model.parameters() if p.ndim == 4)


def test_gpu_run_learns_and_resumes_exactly(tmp_path):
    """A short GPU run: eval works, and a resumed run reproduces the uninterrupted one's final eval (the
    compiled GPU step is deterministic enough for top-1 to agree to 0.5 points)."""
    pytest.importorskip("nvidia.dali", reason="DALI not installed (phase B of scripts/gpu_check.sh carries it)")
    full = Trainer(gpu_cfg(tmp_path / "full", **{"train.ckpt_every": 10})).fit()
    resumed = Trainer(gpu_cfg(tmp_path / "res", **{"train.resume": str(tmp_path / "full" / "ckpt-10.pt")})).fit()
    assert abs(full["top1"] - resumed["top1"]) <= 0.5


def test_reduce_overhead_step_with_moving_inputs_equals_eager(tmp_path, monkeypatch):
    """--train.compile_mode=reduce-overhead (CUDA graphs) with inputs that move every step, as DALI's do: each
    batch is a fresh copy, and once the step is done the copy is overwritten with garbage. A graph that kept a
    pointer to an earlier step's batch (instead of copying each new batch into its static inputs) would read
    garbage, and the 0-d step, lr and metric sums must advance in place. Against the eager fp32 step on the same
    batches over 6 steps (lr warm-up and FlexMatch's per-sample state included): losses and metric sums, weights,
    EMA and algorithm state; and two graphs, no recompile."""
    from torch._dynamo.utils import counters

    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    torch._dynamo.reset()
    counters.clear()
    runs = {}
    for compile in ("on", "off"):
        tr = Trainer(synthetic_cfg(tmp_path / compile, **{"train.compile": compile, "train.amp": "off",
                                                          "algo.name": "flexmatch", "algo.tau": 0.05,
                                                          "optim.warmup_steps": 2,
                                                          "train.compile_mode": "reduce-overhead"}))
        assert tr.cudagraphs == (compile == "on")
        source, held = tr._batches, []

        def moving(source=source, held=held):
            for b in source:
                fresh = type(b)(*(t.clone() if isinstance(t, torch.Tensor) else t for t in b))
                for old in held:  # the previous step's copies: dead now, poisoned
                    for t in old:
                        if isinstance(t, torch.Tensor):
                            t.fill_(float("nan") if t.is_floating_point() else -1)
                held[:] = [fresh]
                yield fresh

        tr._batches = moving()
        sums = []
        for _ in range(6):
            tr.train_step()
            sums.append(tr._metric_sum.clone())
        tr.sync()
        runs[compile] = (torch.stack(sums), [p.detach().clone() for p in tr.model.parameters()],
                         [p.detach().clone() for p in tr.ema.module.parameters()],
                         {k: v.clone() for k, v in tr.algorithm.state_dict().items()}, tr.step_t.item(), tr.lr.item())
    (m_on, w_on, e_on, a_on, s_on, lr_on), (m_off, w_off, e_off, a_off, s_off, lr_off) = runs["on"], runs["off"]
    assert torch.isfinite(m_on).all()
    torch.testing.assert_close(m_on, m_off, rtol=1e-3, atol=1e-4)
    for a, b in zip(w_on + e_on, w_off + e_off):
        assert (a - b).norm() <= 0.05 * b.norm(), ((a - b).norm().item(), b.norm().item())
    torch.testing.assert_close(a_on["classwise_acc"], a_off["classwise_acc"], rtol=1e-3, atol=1e-3)
    assert s_on == s_off == 6 and lr_on == pytest.approx(lr_off)
    assert counters["stats"]["unique_graphs"] == 2, dict(counters["stats"])
