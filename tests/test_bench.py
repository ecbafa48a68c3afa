"""The benchmark harness: the baseline computes what fastssl computes (loss, EMA), and the side-by-side run
writes every field with sane values on tiny settings."""
import copy
import json
from pathlib import Path
import math

import numpy as np
import PIL.Image
import pytest
import torch
from torch import nn

from fastssl.bench import baseline, common
from fastssl.kernels import pseudo_label_ce
from fastssl.kernels.reference import ema_update_reference





# ---- semantics: baseline loss and EMA == fastssl's ------------------------------------------------------

@pytest.mark.parametrize("n,c,kind", [(1, 10, "all"), (7, 10, "partial"), (33, 100, "partial"),
                                      (448, 10, "partial"), (16, 10, "none"), (16, 10, "all")])
def test_boolean_indexed_loss_equals_pseudo_label_ce(n, c, kind):
    g = torch.Generator().manual_seed(n * c)
    logits_w = torch.randn(n, c, generator=g, dtype=torch.float64) * 3
    maxprob = logits_w.softmax(-1).max(-1).values
    tau = {"all": 0.0, "none": 1.01, "partial": maxprob.median().item()}[kind]
    logits_s = (torch.randn(n, c, generator=g, dtype=torch.float64) * 3).requires_grad_()
    logits_lb = torch.randn(4, c, generator=g, dtype=torch.float64)
    y_lb = torch.randint(0, c, (4,), generator=g)

    total, sup, unsup, mask = baseline.fixmatch_loss_boolean(logits_lb, y_lb, logits_w, logits_s, tau)
    (grad_base,) = torch.autograd.grad(unsup, logits_s)
    ref = pseudo_label_ce(logits_w, logits_s, tau, reduction="mean")
    (grad_ref,) = torch.autograd.grad(ref.loss, logits_s)

    assert mask.sum() == {"all": n, "none": 0}.get(kind, mask.sum()) and (kind != "partial" or 0 < mask.sum() < n)
    torch.testing.assert_close(unsup, ref.loss, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad_base, grad_ref, rtol=1e-12, atol=1e-12)
    assert torch.equal(mask, ref.mask)
    torch.testing.assert_close(total, sup + ref.loss, rtol=1e-12, atol=1e-12)


def _bn_net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.LazyLinear(5))


def test_reference_ema_equals_ema_update_reference():
    torch.manual_seed(0)
    model = _bn_net().double()
    model(torch.randn(2, 3, 6, 6, dtype=torch.float64))  # materialise the lazy layer, move BN stats
    ema_model = copy.deepcopy(model)
    ema = baseline.ReferenceEMA(model, ema_model, decay=0.9)
    mirror = [p.detach().clone() for p in model.parameters()]  # fastssl's EMA state, same start
    for step in range(3):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        model(torch.randn(2, 3, 6, 6, dtype=torch.float64))  # BN buffers change too
        ema.update()
        ema_update_reference(mirror, list(model.parameters()), 0.9)
        for got, want in zip(ema_model.parameters(), mirror):
            torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
        for got, want in zip(ema_model.buffers(), model.buffers()):  # buffers copied, as EMATeacher does
            assert torch.equal(got, want)


def test_randaugment_pool_ops_run_at_both_ends_of_their_range():
    rng = np.random.default_rng(0)
    img = PIL.Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
    assert len(baseline.FIXMATCH_POOL) == 14
    for name, op, lo, hi in baseline.FIXMATCH_POOL:
        for v in (lo, hi, (lo + hi) / 2):
            out = op(img, v)
            assert out.size == img.size and out.mode == "RGB", name
    strong = baseline.FixMatchRandAugment(3)(baseline.weak_augment(img))
    assert np.asarray(strong).shape == (32, 32, 3)
    cut = np.asarray(baseline.cutout(PIL.Image.new("RGB", (32, 32), (0, 0, 0)), 0.5))
    grey = (cut == baseline.CUTOUT_FILL).all(-1)
    assert 0 < grey.sum() <= 17 * 17  # a clipped square of side <= 16 (+1: PIL's inclusive rectangle)


def test_baseline_dataset_views_are_normalized_float_chw():
    x = np.random.default_rng(1).integers(0, 256, (8, 16, 16, 3), dtype=np.uint8)
    ds = baseline.SSLDataset(x, np.arange(8), strong=True)
    i, w, s, y = ds[3]
    assert (i, y) == (3, 3) and w.shape == s.shape == (3, 16, 16) and w.dtype == torch.float32
    assert w.abs().max() < 3.0


def test_paired_ratio_and_summary():
    fast, slow = [0.1, 0.2, 0.1], [0.3, 0.4, 0.5]  # seconds per step, per round
    assert common.paired_ratio(fast, slow) == pytest.approx(3.0)
    s = common.summarize(fast, images_per_step=10)
    assert s["it_s"] == pytest.approx(10.0) and s["img_s"] == pytest.approx(100.0)


# ---- the side-by-side run on tiny settings --------------------------------------------------------------

def test_bench_step_tiny_run_writes_complete_json(tmp_path):
    from fastssl.bench import step as bench_step

    out = tmp_path / "step.json"
    rc = bench_step.main(["--model", "cnn_small", "--image-size", "16", "--data", "random", "--num-train", "256",
                          "--num-labels", "40", "--batch-size", "4", "--uratio", "2", "--warmup", "1",
                          "--rounds", "2", "--chunk", "2", "--json", str(out)])
    assert rc == 0
    res = json.loads(out.read_text())
    env = res["env"]
    for key in ("torch", "triton", "dali", "cpu", "cpu_count", "git_sha", "date_utc", "command", "gpu"):
        assert key in env, key
    assert env["git_sha"] != "" and env["torch"] == torch.__version__
    setup = res["setup"]
    assert setup["images_per_step"] == 4 * (1 + 2 * 2) and setup["data_source"].startswith("random")
    expected = ["baseline", "ceiling", "fastssl"]
    for name in expected:
        e = res["systems"][name]
        assert "error" not in e, e.get("error")
        assert math.isfinite(e["it_s"]) and e["it_s"] > 0
        assert e["img_s"] == pytest.approx(e["it_s"] * setup["images_per_step"])
        assert len(e["step_ms_per_round"]) == 2 and e["build_s"] >= 0 and e["warmup_s"] > 0
        assert "config" in e
    assert res["ratios"]["ceiling/baseline"] > 0
    assert res["ratios"]["fastssl/baseline"] > 0 and res["ratios"]["fastssl/ceiling"] > 0


def test_bench_step_synthetic_system_and_trace(tmp_path):
    """`--systems fastssl_synth,ceiling`: the Trainer on synthetic batches beside the model-only ceiling (what
    phase A of scripts/gpu_check.sh runs without DALI), with next() timing and a gzipped profiler trace."""
    import gzip

    from fastssl.bench import step as bench_step

    out = tmp_path / "step.json"
    rc = bench_step.main(["--systems", "fastssl_synth,ceiling", "--model", "cnn_small", "--image-size", "16",
                          "--num-train", "256", "--num-labels", "40", "--batch-size", "4", "--uratio", "2",
                          "--warmup", "1", "--rounds", "2", "--chunk", "2", "--profile", str(tmp_path / "prof"),
                          "--profile-steps", "2", "--json", str(out), "--strict"])
    assert rc == 0
    res = json.loads(out.read_text())
    assert set(res["systems"]) == {"fastssl_synth", "ceiling"}
    synth = res["systems"]["fastssl_synth"]
    assert synth["config"]["data"]["name"] == "synthetic" and synth["config"]["data"]["image_size"] == 16
    assert synth["it_s"] > 0 and 0 <= synth["next_ms_per_step_median"] < synth["step_ms_median"]
    assert synth["sync_ops_per_step"] == 0  # eager on CPU: traced for would-be host syncs
    assert res["ratios"]["fastssl_synth/ceiling"] > 0
    trace = json.loads(gzip.decompress(Path(res["profile_trace"]).read_bytes()))
    assert Path(res["profile_trace"]).name == "fastssl_synth_trace.json.gz"
    assert any(ev.get("name", "").startswith("aten::convolution") for ev in trace["traceEvents"])


def test_bench_pipeline_tiny_run(tmp_path):
    from fastssl.bench import pipeline as bench_pipeline

    out = tmp_path / "pipe.json"
    rc = bench_pipeline.main(["--image-size", "16", "--data", "random", "--num-train", "128", "--num-labels", "20",
                              "--batch-size", "2", "--uratio", "2", "--workers", "0", "--warmup", "1",
                              "--batches", "1", "--rounds", "2", "--json", str(out)])
    assert rc == 0
    res = json.loads(out.read_text())
    assert res["setup"]["views_per_batch"] == 2 * (1 + 2 * 2)
    pil = res["loaders"]["pil_workers0"]
    assert pil["views_s"] > 0 and len(pil["batch_ms_per_round"]) == 2
    (dali,) = [k for k in res["loaders"] if k.startswith("dali")]
    assert res["loaders"][dali]["views_s"] > 0 and f"{dali}/pil_workers0" in res["ratios"]


def test_pil_loader_batch_shapes():
    from fastssl.bench.pipeline import PILLoader

    x = np.random.default_rng(0).integers(0, 256, (64, 16, 16, 3), dtype=np.uint8)
    y = np.arange(64) % 10
    ld = PILLoader(x, y, np.arange(10), batch=2, uratio=3, workers=0)
    (i_lb, x_lb, y_lb), (i_u, x_w, x_s, y_u) = ld.next()
    assert x_lb.shape == (2, 3, 16, 16) and x_w.shape == x_s.shape == (6, 3, 16, 16)
    assert y_lb.dtype == torch.int64 and not torch.equal(x_w, x_s)


@pytest.mark.slow
def test_bench_scaling_two_gloo_processes(tmp_path):
    """1 vs 2 CPU processes (gloo) at the same global batch; slow: two torchrun launches, DALI builds."""
    from fastssl.bench import scaling as bench_scaling

    out = tmp_path / "scaling.json"
    rc = bench_scaling.main(["--model", "cnn_small", "--image-size", "16", "--data", "random", "--num-train", "256",
                             "--num-labels", "40", "--batch-size", "4", "--uratio", "2", "--warmup", "1",
                             "--rounds", "2", "--chunk", "2", "--json", str(out)])
    res = json.loads(out.read_text())
    assert rc == 0, [r.get("error") for r in res["runs"]]
    assert set(res["by_world_size"]) == {"1", "2"}
    assert [r["world_size"] for r in res["runs"]] == [1, 2] and res["runs"][1]["backend"] == "gloo"
    for e in res["by_world_size"].values():
        assert e["it_s"] > 0 and e["efficiency"] > 0


# ---- the harness ships with the package -----------------------------------------------------------------

def test_fastssl_bench_runs_from_a_regular_install(tmp_path):
    """`pip install` (not editable) into a folder, then `fastssl bench` from another directory: the harness
    must come from the installed package, not from a source checkout's benchmarks/."""
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    src, target, elsewhere = tmp_path / "src", tmp_path / "site", tmp_path / "elsewhere"
    for name in ("pyproject.toml", "README.md"):
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(root / name, src / name)
    for name in ("fastssl", "kernels"):
        shutil.copytree(root / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    elsewhere.mkdir()
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                          "--target", str(target), str(src)], capture_output=True, text=True, timeout=300)
    assert pip.returncode == 0, pip.stderr
    env = {"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    for sub, prog in (([], "fastssl bench step"), (["kernels"], "fastssl bench kernels"),
                      (["pipeline"], "fastssl bench pipeline"), (["scaling"], "fastssl bench scaling")):
        out = subprocess.run([sys.executable, "-m", "fastssl", "bench", *sub, "--help"], cwd=elsewhere, env=env,
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0 and f"usage: {prog}" in out.stdout, out.stderr
    where = subprocess.run([sys.executable, "-c", "import fastssl.bench.step as s; print(s.__file__)"],
                           cwd=elsewhere, env=env, capture_output=True, text=True, timeout=120)
    assert Path(where.stdout.strip()).is_relative_to(target), where.stderr


def test_bench_subcommand_errors_name_the_choices(capsys):
    from fastssl.cli import main

    assert main(["bench", "nosuch"]) == 2
    assert "step|pipeline|kernels|scaling" in capsys.readouterr().err


def test_kernels_harness_tiny_run(tmp_path, monkeypatch):
    """Every CPU row timed, the first row's speed-up against itself is 1, the JSON written."""
    from fastssl.bench import kernels

    monkeypatch.setattr(kernels, "LOSS_SHAPES", [(7, 10)])
    monkeypatch.setattr(kernels, "EMA_SIZES", {"tiny": [(3, 3), (5,)]})
    out = tmp_path / "k.json"
    assert kernels.main(["--reps", "2", "--rounds", "2", "--device", "cpu", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert set(res["cases"]) == {"pseudo_label_ce 7x10", "ema tiny (0.00M params)"}
    ce = res["cases"]["pseudo_label_ce 7x10"]
    assert set(ce) == {"eager_reference", "compiled_reference"}
    assert ce["eager_reference"]["speedup_vs_eager_reference"] == pytest.approx(1.0)
    assert all(e["us_median"] > 0 for rows in res["cases"].values() for e in rows.values())
