"""The suite's Triton mode: the interpreter only where there is no CUDA device, and never over the user's choice."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import torch
from conftest import interpret_triton


def test_interpreter_only_without_cuda():
    assert interpret_triton({}, cuda=False) is True
    assert interpret_triton({}, cuda=True) is False  # real Triton on the GPU: wrap_triton rejects interpreted kernels


def test_an_explicit_setting_wins():
    for value in ("0", "1", ""):
        assert interpret_triton({"TRITON_INTERPRET": value}, cuda=False) is False
        assert interpret_triton({"TRITON_INTERPRET": value}, cuda=True) is False


def test_a_fresh_session_follows_the_rule(tmp_path):
    """The decision made at start-up, read back from a pytest child with TRITON_INTERPRET unset (this
    conftest copied next to a probe test)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    shutil.copy(Path(__file__).with_name("conftest.py"), tmp_path / "conftest.py")
    (tmp_path / "test_probe.py").write_text("import os\n\ndef test_mode():\n"
                                            "    print('MODE', repr(os.environ.get('TRITON_INTERPRET')))\n")
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", "test_probe.py"],
                         env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path).stdout
    want = None if torch.cuda.is_available() else "1"
    assert f"MODE {want!r}" in out, out[-2000:]
