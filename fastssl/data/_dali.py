"""DALI, imported in one place: without it, the error says which wheel to install for this machine.

DALI ships one wheel per CUDA major version (pyproject's extras `cuda12` and `cuda13`); the CPU backend
that CI and CPU-only machines use comes with `cuda12`."""
from __future__ import annotations

INSTALL_HINT = (
    "NVIDIA DALI is not installed (fastssl's data pipelines need it). Install the flavour that matches "
    "your CUDA, from the checkout:\n"
    "  CUDA 12.x or no GPU:  pip install -e \".[cuda12]\"   (nvidia-dali-cuda120)\n"
    "  CUDA 13 (torch cu130): pip install -e \".[cuda13]\"   (nvidia-dali-cuda130)\n"
    "or run without data files or DALI: --data.name=synthetic")

try:
    import nvidia.dali.math as dmath
    from nvidia.dali import fn, pipeline_def, types
    from nvidia.dali.data_node import DataNode
    from nvidia.dali.pipeline import do_not_convert
except ModuleNotFoundError as e:
    if not (e.name or "").startswith("nvidia"):
        raise  # DALI is there but one of its own dependencies is not: its message is the useful one
    raise ModuleNotFoundError(INSTALL_HINT, name=e.name) from e

__all__ = ["DataNode", "dmath", "do_not_convert", "fn", "pipeline_def", "types"]
