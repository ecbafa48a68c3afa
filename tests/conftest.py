"""Test configuration. TRITON_INTERPRET must be decided before anything imports the kernels, so it is
decided here: without a CUDA device the Triton kernels run on CPU tensors through the interpreter; with
one they are compiled for it (torch 2.11's `wrap_triton` rejects interpreted kernels, so forcing the
interpreter there would fail every GPU kernel test)."""
import os
import sys
from pathlib import Path

# the checkout's root first: the suite tests this checkout's fastssl (and its kernels/), whatever else is
# installed, and whichever way pytest was started
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from collections.abc import Mapping

import torch  # imports no Triton: the kernels are not imported yet

os.environ.setdefault("OMP_NUM_THREADS", "2")


def interpret_triton(env: Mapping[str, str], cuda: bool) -> bool:
    """Whether the suite must set TRITON_INTERPRET=1: only without CUDA, and never over a value the user
    set (TRITON_INTERPRET=0 on a CPU machine is theirs to choose; =1 on a GPU too)."""
    return "TRITON_INTERPRET" not in env and not cuda


if interpret_triton(os.environ, torch.cuda.is_available()):
    os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (none on this machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
