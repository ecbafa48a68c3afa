"""fastssl: fast, trustworthy semi-supervised learning."""
from __future__ import annotations

import importlib.abc
import importlib.util
import sys
from pathlib import Path

__version__ = "0.1.0"


class _SourceKernels(importlib.abc.MetaPathFinder):
    """Imports the checkout's top-level `kernels/` as `fastssl.kernels`.

    An install maps `kernels/` to `fastssl.kernels` (pyproject's package-dir); a bare checkout run with
    `PYTHONPATH=.` has no such mapping, and an editable install of *another* checkout would map it to that
    checkout's kernels. So when this package sits in a source checkout, its own `kernels/` wins. Lazy: nothing
    (no torch, no Triton) is imported until `fastssl.kernels` is."""

    def __init__(self, root: Path):
        self.root = root

    def find_spec(self, name, path=None, target=None):
        if name != "fastssl.kernels":
            return None
        return importlib.util.spec_from_file_location(
            name, self.root / "__init__.py", submodule_search_locations=[str(self.root)])


_checkout = Path(__file__).resolve().parent.parent
if (_checkout / "pyproject.toml").is_file() and (_checkout / "kernels" / "pseudo_label_ce.py").is_file():
    sys.meta_path.insert(0, _SourceKernels(_checkout / "kernels"))
