"""Test configuration. TRITON_INTERPRET must be set before anything imports triton, so it is set here:
Triton kernels then run on CPU tensors through the interpreter."""
import os
import sys
from pathlib import Path

# the checkout's root: benchmarks/ is a source-tree harness, not installed, and test_bench.py and
# test_host_syncs.py import it, each of them also when run alone
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("OMP_NUM_THREADS", "2")

import pytest  # noqa: E402
import torch  # noqa: E402


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (none on this machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
