"""--train.loggers: TensorBoard and W&B (offline) receive exactly what metrics.jsonl records, read back from
their own files; a missing package or unknown name fails before anything is built, naming the pip command."""
import glob
import json
import struct

import pytest

from fastssl.cli import main
from fastssl.train import loggers as loggers_mod
from fastssl.train.trainer import Trainer
from test_trainer import tiny_cfg

EVAL_KEYS = ("top1", "top5", "best_top1", "its_per_sec", "lr", "loss", "mask_ratio")


def _run(out, loggers: str) -> list[dict]:
    Trainer(tiny_cfg(out, **{"train.loggers": loggers})).fit()
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_tensorboard_event_file_holds_the_jsonl_values(tmp_path):
    pytest.importorskip("tensorboard", reason="optional extra: pip install 'fastssl[tensorboard]'")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    records = _run(tmp_path, "jsonl,tensorboard")
    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    assert [r["step"] for r in records] == [3, 6]
    for key in EVAL_KEYS:
        events = acc.Scalars(f"eval/{key}")
        assert [e.step for e in events] == [r["step"] for r in records]
        # event files store float32
        assert [e.value for e in events] == pytest.approx([r[key] for r in records], rel=1e-6, abs=1e-6)
    # log_every == eval_every: each record carries the step metrics read at its step
    for key in ("mask_ratio", "pl_acc", "sup_loss"):
        assert [e.value for e in acc.Scalars(f"train/{key}")] == pytest.approx([r[key] for r in records], abs=1e-6)
    assert [e.step for e in acc.Scalars("train/loss")] == [3, 6]


def _wandb_records(path: str) -> list[bytes]:
    """The records of a .wandb file, which is framed like a LevelDB log: a 7-byte header (':W&B', magic,
    version), then 32 KiB blocks of chunks, each with a 7-byte header (crc32c, length, type: 1 full, 2 first,
    3 middle, 4 last); a block tail shorter than a chunk header is zero padding."""
    data = open(path, "rb").read()
    assert data[:4] == b":W&B"
    block, pos, records, part = 32768, 7, [], b""
    while pos + 7 <= len(data):
        left = block - pos % block
        _, n, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if left < 7 or (n == 0 and kind == 0):
            pos += left
            continue
        part += data[pos + 7:pos + 7 + n]
        pos += 7 + n
        if kind in (1, 4):
            records.append(part)
            part = b""
    return records


def test_wandb_offline_run_holds_the_jsonl_values(tmp_path, monkeypatch):
    pytest.importorskip("wandb", reason="optional extra: pip install 'fastssl[wandb]'")
    from wandb.proto import wandb_internal_pb2

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    records = _run(tmp_path, "jsonl,wandb")
    (run_file,) = glob.glob(str(tmp_path / "wandb" / "offline-run-*" / "run-*.wandb"))
    history, config = [], None
    for raw in _wandb_records(run_file):
        rec = wandb_internal_pb2.Record()
        rec.ParseFromString(raw)
        if rec.WhichOneof("record_type") == "history":
            history.append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in rec.history.item})
        elif rec.WhichOneof("record_type") == "run":
            config = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in rec.run.config.update}
    assert [h["_step"] for h in history] == [r["step"] for r in records]
    for h, r in zip(history, records):
        assert {k: h[f"eval/{k}"] for k in EVAL_KEYS} == pytest.approx({k: r[k] for k in EVAL_KEYS}, rel=1e-12)
        assert h["train/mask_ratio"] == pytest.approx(r["mask_ratio"])
    assert config["train"]["steps"] == 6 and config["model"]["name"] == "cnn_small"


def test_unknown_logger_and_missing_package_fail_before_the_run(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    with pytest.raises(ValueError, match="unknown logger 'csv'; choose from jsonl, tensorboard, wandb"):
        tiny_cfg(out, **{"train.loggers": "jsonl,csv"}).validate()
    real = loggers_mod.importlib.util.find_spec
    monkeypatch.setattr(loggers_mod.importlib.util, "find_spec", lambda m: None if m == "wandb" else real(m))
    assert main(["train", f"--train.out={out}", "--train.loggers=jsonl,wandb"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == 'fastssl: error: --train.loggers=wandb needs the wandb package: pip install "fastssl[wandb]"'
    assert not out.exists()  # nothing was built or written
