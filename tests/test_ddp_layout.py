"""DDP's gradient buckets take the parameters' strides; a gradient in another layout is copied with a strided copy
every step (DDP warns once: "Grad strides do not match bucket view strides"). The batches are NHWC in memory on
every device, so the model must be too: checked in a two-rank gloo run of the real trainer on CPU."""
import warnings

import pytest

from _gloo import run_two_ranks, set_rank_env


def _worker(rank: int, port: int, out: str, q) -> None:
    set_rank_env(rank, port)
    import torch.distributed as dist

    from fastssl.config import Config, apply_overrides
    from fastssl.train.trainer import Trainer

    cfg = Config()
    apply_overrides(cfg, {"data.batch_size": 8, "data.uratio": 2, "train.steps": 2, "train.compile": "off",
                          "train.progress": False, "train.out": out})
    tr = Trainer(cfg)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tr.run_steps(2)
    # one backward without the optimizer's zero_grad after it, to read the gradients' strides
    out_ = tr.forward(next(tr._batches), tr.step_t)
    out_.loss.backward()
    mismatched = [n for n, p in tr.model.named_parameters() if p.grad is not None and p.grad.stride() != p.stride()]
    q.put((rank, [str(w.message) for w in caught], mismatched))
    dist.destroy_process_group()


@pytest.mark.slow  # two spawned ranks: 17 s of CPU, about 2 min on the shared machine
def test_ddp_gradients_land_in_their_buckets_without_a_layout_copy(tmp_path):
    results = run_two_ranks(_worker, str(tmp_path))
    for rank, messages, mismatched in results:
        assert not [m for m in messages if "strides do not match" in m], (rank, messages)
        assert mismatched == [], f"rank {rank}: gradients in another layout than their parameters: {mismatched}"
