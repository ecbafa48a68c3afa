"""What a run does when things go wrong: another run's folder, a second writer, SIGTERM/SIGINT, divergence, a
full disk, an output path under a file, unreadable images. Each test drives the real failure and checks the
outcome against the files left on disk (or a second implementation: PIL for the image check)."""
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from fastssl.cli import main, parse_overrides
from fastssl.config import Config, apply_overrides
from fastssl.train import faults, runlock
from fastssl.train.trainer import Trainer

REPO = Path(__file__).resolve().parents[1]
TINY = {"data.batch_size": 8, "data.uratio": 2, "data.eval_batch_size": 450, "train.steps": 3,
        "train.eval_every": 3, "train.log_every": 3, "train.ckpt_every": 3, "train.progress": False,
        "train.compile": "off", "train.ema_decay": 0.9}


def cfg_for(out, **extra) -> Config:
    cfg = Config()
    apply_overrides(cfg, {**TINY, **extra})
    cfg.train.out = out and str(out)
    return cfg


def argv_for(out, **extra) -> list[str]:
    return ["train", *(f"--{k}={v}" for k, v in {**TINY, **extra}.items()), f"--train.out={out}"]


def strict_rows(path: Path) -> list[dict]:
    def no_constant(tok):
        raise ValueError(f"{tok} is not JSON")

    return [json.loads(line, parse_constant=no_constant) for line in path.read_text().splitlines()]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("finished")
    Trainer(cfg_for(out)).fit()
    return out


# ------------------------------------------------------------------------------ 1. never overwrite a run

def test_another_config_cannot_overwrite_a_finished_run(finished_run, capsys):
    before = snapshot(finished_run)
    code = main(argv_for(finished_run, **{"algo.tau": 0.5}))
    err = capsys.readouterr().err
    assert code == 2 and f"--train.out={finished_run} already holds a run" in err
    assert f"--train.resume={finished_run}" in err and "another --train.out" in err and err.count("\n") == 1
    assert snapshot(finished_run) == before  # config, metrics, checkpoints untouched


def test_resume_from_another_folder_into_a_run_is_refused(finished_run, tmp_path):
    other = tmp_path / "other"
    Trainer(cfg_for(other)).fit()
    with pytest.raises(faults.RunError, match="already holds a run"):
        Trainer(cfg_for(other, **{"train.resume": str(finished_run / "ckpt-3.pt")}))
    resumed = Trainer(cfg_for(other, **{"train.resume": str(other)}))  # its own run: fine
    assert resumed.step == 3


def test_default_run_directories_never_collide(tmp_path, monkeypatch):
    import fastssl.train.trainer as trainer_mod
    from datetime import datetime

    class Frozen(datetime):  # both runs start in the same second
        @classmethod
        def now(cls, tz=None):
            return datetime(2026, 1, 1, 12, 0, 0)

    monkeypatch.setattr(runlock, "datetime", Frozen)
    monkeypatch.setattr(trainer_mod, "datetime", Frozen, raising=False)
    monkeypatch.chdir(tmp_path)
    tr = Trainer(cfg_for(None))
    tr.fit()
    first, tr.out_dir = tr.out_dir, None
    tr.fit()
    assert first == Path("runs/fixmatch-digits-20260101-120000")
    assert tr.out_dir == Path("runs/fixmatch-digits-20260101-120000-2") and (tr.out_dir / "config.json").exists()


# ------------------------------------------------------------------------------ 2. one writer per run directory

def test_a_second_writer_is_refused_naming_the_holder(tmp_path, capsys):
    out = tmp_path / "run"
    with runlock.RunLock(out):
        code = main(argv_for(out))
        err = capsys.readouterr().err
    assert code == 2 and f"pid {os.getpid()} on {socket.gethostname()}" in err and "started 20" in err
    assert not (out / "metrics.jsonl").exists() and not (out / ".lock").exists()  # released on exit


def test_a_stale_lock_of_a_dead_process_is_taken_over(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / ".lock").write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(), "started": "x"}))
    with runlock.RunLock(tmp_path) as lock:
        assert runlock.read_lock(tmp_path) == lock.me
    assert not (tmp_path / ".lock").exists()
    (tmp_path / ".lock").write_text(json.dumps({"pid": os.getpid(), "host": "elsewhere", "started": "x"}))
    with pytest.raises(faults.RunError, match="pid .* on elsewhere"):  # another host's pid cannot be checked
        runlock.RunLock(tmp_path).acquire()


# ------------------------------------------------------------------------------ 3. preemption

def _run_until_signalled(out: Path, sig: int, steps: int, extra: dict) -> subprocess.CompletedProcess:
    """`fastssl train` in a subprocess, sent `sig` once its first evaluation is on disk."""
    argv = [sys.executable, "-m", "fastssl", *argv_for(out, **{**extra, "train.steps": steps})]
    proc = subprocess.Popen(argv, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 500
    while not (out / "metrics.jsonl").exists() or not (out / "metrics.jsonl").read_text():
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=300)
    return subprocess.CompletedProcess(argv, proc.returncode, stdout, stderr)


def _assert_same_state(a: Path, b: Path) -> None:
    ref, got = (torch.load(p, weights_only=False) for p in (a, b))
    for part in ("model", "ema", "algorithm"):
        assert ref[part].keys() == got[part].keys()
        for k, v in ref[part].items():
            assert torch.equal(v, got[part][k]), f"{part}.{k} differs"
    for x, y in zip(ref["optimizer"]["state"].values(), got["optimizer"]["state"].values(), strict=True):
        assert torch.equal(x["momentum_buffer"], y["momentum_buffer"])


@pytest.mark.parametrize("sig", [signal.SIGTERM, pytest.param(signal.SIGINT, marks=pytest.mark.slow)])
def test_signal_checkpoints_and_resume_is_bit_identical(tmp_path, sig):
    # ckpt_every=0: the only checkpoint before the end is the one the signal writes, so nothing is lost
    extra = {"train.eval_every": 20, "train.log_every": 5, "train.ckpt_every": 0}
    steps = 200
    out = tmp_path / "run"
    proc = _run_until_signalled(out, sig, steps, extra)
    assert proc.returncode == 128 + sig, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and f"--train.resume={out}" in proc.stderr
    (ck,) = out.glob("ckpt-*.pt")
    stopped = int(ck.stem.split("-")[1])
    assert 20 <= stopped < steps and not (out / ".lock").exists() and not (out / "summary.json").exists()
    resumed = Trainer(cfg_for(out, **{**extra, "train.steps": steps, "train.resume": "auto"}))
    assert resumed.step == stopped
    resumed.fit()
    Trainer(cfg_for(tmp_path / "ref", **{**extra, "train.steps": steps})).fit()
    _assert_same_state(tmp_path / "ref" / f"ckpt-{steps}.pt", out / f"ckpt-{steps}.pt")
    ref_rows, got_rows = strict_rows(tmp_path / "ref" / "metrics.jsonl"), strict_rows(out / "metrics.jsonl")
    assert [(r["step"], r["top1"]) for r in ref_rows] == [(r["step"], r["top1"]) for r in got_rows]


def test_resume_auto_starts_fresh_without_a_checkpoint(tmp_path):
    assert Trainer(cfg_for(tmp_path / "new", **{"train.resume": "auto"})).step == 0
    with pytest.raises(faults.RunError, match="pass --train.out=DIR too"):
        runlock.resolve_resume("auto", None)


@pytest.mark.slow
def test_torchrun_ranks_stop_at_the_same_step_with_one_checkpoint(tmp_path):
    from tests.test_distributed import free_port

    out = tmp_path / "run"
    base = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port", str(free_port()),
            "-m", "fastssl", *argv_for(out, **{"train.steps": 400, "train.eval_every": 20, "train.log_every": 5,
                                                "train.ckpt_every": 0})]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(base, cwd=REPO, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 500
    while not (out / "metrics.jsonl").exists() or not (out / "metrics.jsonl").read_text():
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)  # torchrun forwards it to both ranks
    _, stderr = proc.communicate(timeout=300)
    (ck,) = out.glob("ckpt-*.pt")
    stopped = int(ck.stem.split("-")[1])
    assert stopped % 5 == 0 and 20 <= stopped < 400, stderr[-3000:]  # agreed at a log_every point
    assert stderr.count(f"stopped by SIGTERM after step {stopped}") == 2  # both ranks, same step
    state = torch.load(ck, weights_only=False)
    assert state["step"] == stopped and len(state["loader"]) == 2


# ------------------------------------------------------------------------------ 4. divergence

def test_divergence_stops_with_code_3_and_strict_json(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(argv_for(out, **{"optim.lr": 1e6, "train.steps": 12, "train.log_every": 3, "train.eval_every": 3}))
    err = capsys.readouterr().err
    assert code == 3 and "diverged at step 3" in err and "Last good checkpoint: none" in err
    assert not list(out.glob("ckpt-*")) and not (out / ".lock").exists()
    strict_rows(out / "metrics.jsonl")  # parses as strict JSON (empty: nothing was evaluated)


def test_non_finite_weights_never_replace_good_checkpoints(tmp_path):
    tr = Trainer(cfg_for(tmp_path, **{"train.steps": 12, "train.log_every": 12, "train.eval_every": 12}))
    step = tr.train_step

    def poisoned_step():  # the EMA teacher blows up after step 7: the loss stays finite, the weights do not
        step()
        if tr.step == 7:
            next(tr.ema.module.parameters()).data.fill_(float("inf"))

    tr.train_step = poisoned_step
    with pytest.raises(faults.Diverged, match=rf"diverged at step 9: .*Last good checkpoint: {tmp_path}/ckpt-6.pt"):
        tr.fit()
    assert sorted(p.name for p in tmp_path.glob("ckpt-*")) == ["ckpt-3.pt", "ckpt-6.pt"]
    good = torch.load(tmp_path / "ckpt-6.pt", weights_only=False)
    assert all(torch.isfinite(v).all() for v in good["ema"].values() if v.is_floating_point())


def test_strict_json_writes_non_finite_as_null():
    rec = {"loss": float("nan"), "x": [1.5, float("inf")], "n": {"y": -float("inf")}, "s": "ok"}
    assert json.loads(faults.strict_json(rec)) == {"loss": None, "x": [1.5, None], "n": {"y": None}, "s": "ok"}


# ------------------------------------------------------------------------------ 5. file errors name the file

def test_full_disk_checkpoint_names_the_file_and_leaves_no_tmp(tmp_path):
    # A real write failure: the file-size limit makes the kernel refuse the write (EFBIG), as a full disk does.
    code = f"""
import resource, signal, torch
from fastssl.train.checkpoint import save_atomic
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))
save_atomic({{"w": torch.zeros(1 << 20)}}, {str(tmp_path / 'ckpt-5.pt')!r})
"""
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                          capture_output=True, text=True, timeout=300)
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode != 0 and "CheckpointWriteError" in last
    assert f"cannot write checkpoint {tmp_path / 'ckpt-5.pt'}: File too large" in last and "--train.out" in last
    assert list(tmp_path.iterdir()) == []  # no ckpt-5.pt.tmp left filling the disk


def test_output_path_under_a_file_fails_before_the_data_is_read(tmp_path, monkeypatch, capsys):
    import fastssl.train.trainer as trainer_mod

    def no_data(*a, **k):
        raise AssertionError("the data was read before the output path was checked")

    monkeypatch.setattr(trainer_mod, "build_data", no_data)
    (tmp_path / "file").write_text("")
    code = main(argv_for(tmp_path / "file" / "run"))
    err = capsys.readouterr().err
    assert code == 2 and err == f"fastssl: error: --train.out={tmp_path}/file/run: {tmp_path}/file is a file, " \
                                "not a folder; pass another --train.out\n"


def _image_folder(root: Path):
    from PIL import Image

    px = (torch.arange(16 * 16 * 3) % 251).to(torch.uint8).reshape(16, 16, 3).numpy()
    for split in ("train", "val"):
        for cls in ("a", "b"):
            (root / split / cls).mkdir(parents=True)
            Image.fromarray(px).save(root / split / cls / "ok.jpg", format="JPEG")
            Image.fromarray(px).save(root / split / cls / "ok.png", format="PNG")
    jpg, png = (root / "train/a/ok.jpg").read_bytes(), (root / "train/a/ok.png").read_bytes()
    bad = {"train/a/cut.jpg": jpg[: len(jpg) // 2], "train/b/cut.png": png[: len(png) // 2], "val/b/page.jpg": b"<html>404",
           "val/a/empty.png": b""}
    for name, data in bad.items():
        (root / name).write_bytes(data)
    return bad


def test_unreadable_images_are_named_before_training_and_checks_are_cached(tmp_path, monkeypatch):
    from PIL import Image

    from fastssl.data import verify
    from fastssl.data.sources import DatasetError, load_dataset

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    root = tmp_path / "imgs"
    bad = _image_folder(root)
    files = sorted(str(p) for p in root.rglob("*.*"))

    def pil_fails(f):  # the reference: a full decode
        try:
            with Image.open(f) as im:
                im.load()
            return False
        except Exception:
            return True

    assert [f for f in files if verify.problem(f)] == [f for f in files if pil_fails(f)]
    with pytest.raises(DatasetError, match="4 unreadable image") as e:
        load_dataset("imagefolder", root)
    assert all(str(root / name) in str(e.value) for name in bad)
    for name in bad:
        (root / name).unlink()
    checked = []
    monkeypatch.setattr(verify, "problem", lambda f: checked.append(f) or None)
    load_dataset("imagefolder", root)  # the good files were cached as good on the first pass: none re-read
    assert checked == []
    (root / "train/a/ok.jpg").write_bytes((root / "train/b/ok.jpg").read_bytes() + b"\0")  # changed size
    load_dataset("imagefolder", root)
    assert checked == [str(root / "train/a/ok.jpg")]


# ------------------------------------------------------------------------------ 6. short options

def test_out_and_resume_short_forms_and_exit_codes_in_help(capsys):
    overrides, plain = parse_overrides(["--out", "runs/x", "--resume=auto", "--train.steps=5"])
    assert overrides == {"train.out": "runs/x", "train.resume": "auto", "train.steps": "5"} and plain == {}
    assert main(["train", "--help"]) == 0
    help_text = capsys.readouterr().out
    assert "--out=DIR, --resume=DIR|auto" in help_text
    codes = help_text.split("exit codes:\n")[1]
    assert all(f"  {c} " in codes for c in (0, 1, 2, 3, 143)) and "130 by SIGINT" in codes


def test_reproduce_restarts_a_run_that_died_before_its_first_checkpoint(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("reproduce", REPO / "scripts" / "reproduce.py")
    repro = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(repro)
    run_dir = tmp_path / "seed0"
    run_dir.mkdir()
    (run_dir / "config.json").write_text("{}")  # a run that holds files but no checkpoint
    assert repro.state(run_dir, 100) == "new"
    cmd = repro.command("cifar10_fixmatch_40", 0, run_dir, data_root=None, nproc=1, resume=False, extra=[])
    assert cmd[-1] == "--train.resume=auto"
    resolved = runlock.claim_check(str(run_dir), "auto", check=True)  # what the trainer then accepts
    assert resolved is None  # no checkpoint: a fresh start in place
    with pytest.raises(faults.RunError, match="already holds a run"):
        runlock.claim_check(str(run_dir), None, check=True)
