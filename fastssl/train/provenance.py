"""What produced a result: versions, git SHA, hardware. Written next to every number."""
from __future__ import annotations

import platform
import subprocess
from pathlib import Path

import torch


def git_sha() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent, capture_output=True,
                              text=True, timeout=5).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _version(mod: str) -> str:
    try:
        return __import__(mod, fromlist=["__version__"]).__version__
    except Exception:  # not installed, or broken: report it rather than fail the run
        return "not installed"


def provenance(device: torch.device | None = None) -> dict:
    dev = "cpu"
    if device is not None and device.type == "cuda":
        dev = torch.cuda.get_device_name(device)
    return {
        "git_sha": git_sha(),
        "versions": {"python": platform.python_version(), "torch": torch.__version__, "triton": _version("triton"),
                     "dali": _version("nvidia.dali"), "numpy": _version("numpy"), "fastssl": _version("fastssl")},
        "hardware": {"device": dev, "cpu": platform.processor() or platform.machine(),
                     "cpu_count": __import__("os").cpu_count(), "platform": platform.platform()},
    }
