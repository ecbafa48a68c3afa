"""The trainer on CUDA (skipped without a GPU; run on the lent GPU): compiled, bf16, channels_last, and no host
sync inside the steady-state step."""
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


def test_compiled_bf16_step_never_syncs(tmp_path):
    tr = Trainer(gpu_cfg(tmp_path))
    assert tr.compiled and tr.amp and tr.channels_last and tr.device.type == "cuda"
    tr.run_steps(5)  # warm-up: compilation, DALI start-up, allocator
    tr.sync()
    torch.cuda.set_sync_debug_mode("error")
    try:
        tr.run_steps(5)  # any .item()/.tolist()/implicit sync in the step raises here
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in tr.model.parameters() if p.ndim == 4)


def test_gpu_run_learns_and_resumes_exactly(tmp_path):
    """A short GPU run: eval works, and a resumed run reproduces the uninterrupted one's final eval (the
    compiled GPU step is deterministic enough for top-1 to agree to 0.5 points)."""
    full = Trainer(gpu_cfg(tmp_path / "full", **{"train.ckpt_every": 10})).fit()
    resumed = Trainer(gpu_cfg(tmp_path / "res", **{"train.resume": str(tmp_path / "full" / "ckpt-10.pt")})).fit()
    assert abs(full["top1"] - resumed["top1"]) <= 0.5
