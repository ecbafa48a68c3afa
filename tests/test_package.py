"""The package runs from a bare checkout: `fastssl.kernels` is the checkout's own `kernels/`."""
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_bare_checkout_imports_its_own_kernels(tmp_path):
    # A copy of the checkout that was never installed: an editable install elsewhere must not answer for it,
    # and `PYTHONPATH=.` alone must be enough (the GPU machine runs the project this way).
    for name in ("fastssl", "kernels"):
        shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    code = ("import fastssl.kernels, fastssl.kernels.ema, sys; print(fastssl.kernels.__file__); "
            "print(fastssl.kernels.ema.__file__); print(callable(fastssl.kernels.pseudo_label_ce))")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"},
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    init, ema, ok = out.stdout.split()
    assert Path(init) == tmp_path / "kernels" / "__init__.py"
    assert Path(ema) == tmp_path / "kernels" / "ema.py"
    assert ok == "True"


def test_importing_fastssl_loads_no_kernels():
    code = "import fastssl, sys; print('fastssl.kernels' in sys.modules, 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.stdout.split() == ["False", "False"], out.stderr
