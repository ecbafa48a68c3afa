"""Without DALI: a Config is still made and checked, and the data pipelines fail with the install command
for each DALI flavour (pyproject's extras). Run in a child whose `nvidia.dali` cannot be imported."""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import tomllib

REPO = Path(__file__).resolve().parents[1]

CHILD = textwrap.dedent("""
    import sys
    sys.modules["nvidia.dali"] = None  # as if not installed: any import of it raises ModuleNotFoundError
    from fastssl.config import Config, apply_overrides
    cfg = Config()
    apply_overrides(cfg, {"aug.num_ops": 2})
    cfg.validate()
    print("CONFIG OK", cfg.aug.num_ops)
    for mod in ("fastssl.data.pipeline", "fastssl.data.augment"):
        try:
            __import__(mod)
        except ModuleNotFoundError as e:
            print("ERROR", mod, e.name, "|", str(e).replace("\\n", " "))
""")


def test_config_without_dali_and_install_hint():
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, timeout=300,
                         cwd=REPO)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.splitlines()
    assert "CONFIG OK 2" in lines
    errors = [ln for ln in lines if ln.startswith("ERROR")]
    assert len(errors) == 2, out.stdout
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for line in errors:
        assert line.split(" | ")[0].split()[-1].startswith("nvidia.dali")  # e.name: the module not found
        for extra, wheel in (("cuda12", "nvidia-dali-cuda120"), ("cuda13", "nvidia-dali-cuda130")):
            # the command named in the message installs the wheel the extra really lists
            assert f'pip install -e ".[{extra}]"' in line and wheel in line
            assert any(req.startswith(wheel) for req in extras[extra])
