"""Imports only look down (GUIDE §2), and the commands that only parse or list stay light.

Floors, lowest first; a module may import its own floor and those below, never above. `data`, `models`,
`kernels` and `algorithms` stand side by side on floor 1 and import none of each other, except algorithms →
kernels. Registries one floor up are reached by name (`importlib.import_module` of a registry table), which
this AST walk does not count: that is how the ground floor resolves `--algo.name`.
"""
import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

FLOORS = {
    "fastssl": 0, "fastssl.batch": 0, "fastssl.collectives": 0, "fastssl.config": 0,
    "fastssl.__main__": 4, "fastssl.data": 1, "fastssl.models": 1, "fastssl.kernels": 1, "fastssl.algorithms": 1,
    # recipes are derived from the algorithm classes (their `recipe` attribute): above the algorithms
    "fastssl.recipes": 2, "fastssl.train": 2, "fastssl.bench": 3, "fastssl.cli": 3, "fastssl.report": 2,
}
SIDE_BY_SIDE_ALLOWED = {("fastssl.algorithms", "fastssl.kernels")}


def _unit(module: str) -> str:
    """The FLOORS key a module belongs to: the longest registered prefix."""
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in FLOORS:
            return ".".join(parts[:n])
    raise KeyError(f"{module} is on no floor: add it to FLOORS")


def _modules():
    """(dotted name, path) of every module of the package, kernels/ as fastssl.kernels."""
    for path in sorted((ROOT / "fastssl").rglob("*.py")):
        rel = path.relative_to(ROOT).with_suffix("")
        yield ".".join(p for p in rel.parts if p != "__init__"), path
    for path in sorted((ROOT / "kernels").glob("*.py")):
        yield "fastssl.kernels" + ("" if path.stem == "__init__" else f".{path.stem}"), path


def _imports(module: str, path: Path):
    """Every fastssl module imported anywhere in the file (top level and inside functions)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            yield base


def test_imports_only_look_down():
    bad = []
    for module, path in _modules():
        here = _unit(module)
        for target in _imports(module, path):
            if not target.startswith("fastssl"):
                continue
            there = _unit(target)
            if there == here or (here, there) in SIDE_BY_SIDE_ALLOWED:
                continue
            if FLOORS[there] >= FLOORS[here] and not (FLOORS[here] == 0 == FLOORS[there]):
                bad.append(f"{path.relative_to(ROOT)}: {module} (floor {FLOORS[here]}) imports {target} "
                           f"(floor {FLOORS[there]})")
    assert not bad, "imports that run up (or sideways on) a floor:\n" + "\n".join(bad)


def test_floor_check_catches_an_upward_import(tmp_path):
    """The walk sees a function-level import and a relative one (the check can fail)."""
    f = tmp_path / "x.py"
    f.write_text("def g():\n    from fastssl.train.trainer import Trainer\nfrom ..cli import main\n")
    assert sorted(_imports("fastssl.data.x", f)) == ["fastssl.cli", "fastssl.train.trainer"]


HEAVY = ("torch", "nvidia.dali", "triton", "numpy")


def _run(code: str) -> list[str]:
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


@pytest.mark.parametrize("argv", [["--help"], ["info"], ["train", "--help"]])
def test_help_and_info_import_nothing_heavy_and_take_under_a_second(argv):
    """CPU seconds of the process (not wall time: the shared test machines run at load 10+, where waiting for a
    core would dominate), from importing the CLI to its answer."""
    code = (f"import contextlib, io, sys, time; t = time.process_time(); from fastssl.cli import main\n"
            f"with contextlib.redirect_stdout(io.StringIO()): rc = main({argv!r})\n"
            f"print(rc, time.process_time() - t, *[m for m in {HEAVY!r} if m in sys.modules])")
    rc, secs, *loaded = _run(code)
    assert rc == "0" and loaded == [] and float(secs) < 1.0, (secs, loaded)


@pytest.mark.parametrize("algo", [["--algo.name=fixmatch"], ["--algo.name=flexmatch"]])
def test_train_help_imports_no_dali_no_triton(algo):
    """With --algo.name, --help lists that algorithm's options, which live in its module, which imports torch:
    torch is imported first and timed apart, so the second figure is what parsing and describing every option
    costs on top of it."""
    code = (f"import contextlib, io, sys, time; t = time.process_time(); import torch; t1 = time.process_time()\n"
            f"from fastssl.cli import main\n"
            f"with contextlib.redirect_stdout(io.StringIO()) as f: rc = main(['train', '--help', *{algo!r}])\n"
            f"print(rc, time.process_time() - t1, 'thresh_warmup' in f.getvalue(), "
            f"*[m for m in ('nvidia.dali', 'triton') if m in sys.modules])")
    rc, secs, has_flex, *loaded = _run(code)
    assert rc == "0" and loaded == [] and float(secs) < 1.0, (secs, loaded)
    assert has_flex == str(algo == ["--algo.name=flexmatch"])  # FlexMatch's own option appears exactly when chosen


def test_kernels_load_triton_lazily():
    code = ("import sys, torch, fastssl.kernels as k; a = 'triton' in sys.modules\n"
            "k.pseudo_label_ce(torch.randn(3, 4), torch.randn(3, 4), 0.5); b = 'triton' in sys.modules\n"
            "k.load_triton(); from fastssl.kernels.pseudo_label_ce import MAX_C\n"
            "print(a, b, 'triton' in sys.modules, callable(k.pseudo_label_ce) and not isinstance(k.pseudo_label_ce, type(sys)))")
    assert _run(code) == ["False", "False", "True", "True"]
