"""Every named recipe applies through the real option path (names and types checked by the config) and
validates; the published protocol's shared settings are what the papers state."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fastssl.algorithms import ALGORITHMS, get_algorithm
from fastssl.cli import make_config
from fastssl.recipes import RECIPES


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_recipe_applies_and_validates(name):
    cfg = make_config({"data.root": "/data"}, name)
    cfg.validate()
    recipe = RECIPES[name]
    assert cfg.algo_name == recipe.get("algo.name", "fixmatch")
    for key, value in recipe.items():
        section, _, field = key.partition(".")
        if key != "algo.name":
            got = getattr(cfg.algo if section == "algo" else getattr(cfg, section), field)
            assert got == value, f"{name}: --{key} is {got!r}, recipe says {value!r}"
    assert cfg.train.steps == 2**20 and cfg.train.ema_decay == 0.999 and cfg.optim.lr == 0.03
    assert cfg.optim.nesterov and cfg.data.batch_size == 64


def test_every_algorithm_has_cifar10_recipes():
    for algo in ALGORITHMS:
        for n in (40, 250, 4000):
            assert f"cifar10_{algo}_{n}" in RECIPES
    assert RECIPES["cifar100_fixmatch_400"]["model.name"] == "wrn_28_8"
    assert RECIPES["cifar100_fixmatch_400"]["optim.weight_decay"] == 1e-3
    assert RECIPES["stl10_fixmatch_40"]["model.name"] == "wrn_37_2"


def test_derived_recipes_equal_the_hand_listed_table_they_replace():
    """The recipes are derived (base + dataset + label count + each algorithm's `recipe` attribute); the file
    is the hand-listed table of recipes.py before the derivation (git 5af0172), dumped with json: every name,
    its order and every override must be the same; algorithms registered since only add their own."""
    before = json.loads((Path(__file__).parent / "data" / "recipes_before_derivation.json").read_text())
    assert [n for n in RECIPES if n in before] == list(before)
    assert all(n.split("_")[1] not in {m.split("_")[1] for m in before} for n in RECIPES if n not in before)
    for name, overrides in before.items():
        assert RECIPES[name] == overrides, name


def test_recipe_names_import_no_algorithm_and_reading_one_imports_no_triton():
    """`fastssl info` and `--help` list recipes and algorithms: that imports no algorithm module; reading a
    recipe or an algorithm's Config imports that algorithm's module, but not the kernels (Triton)."""
    code = (
        "import sys\n"
        "from fastssl.recipes import RECIPES, get_recipe\n"
        "from fastssl.algorithms import ALGORITHMS, get_algorithm\n"
        "names = sorted(RECIPES) + sorted(ALGORITHMS)\n"
        "loaded = lambda: sorted(m for m in sys.modules if m.startswith('fastssl.algorithms.'))\n"
        "assert loaded() == [], loaded()  # names only: not even the contract (torch)\n"
        "get_recipe('cifar10_flexmatch_40'); get_algorithm('softmatch').Config()\n"
        "assert loaded() == ['fastssl.algorithms.base', 'fastssl.algorithms.flexmatch', 'fastssl.algorithms.losses',"
        " 'fastssl.algorithms.softmatch'], loaded()\n"
        "assert not [m for m in sys.modules if m == 'triton' or m.startswith(('triton.', 'fastssl.kernels'))]\n"
    )
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root)}
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root, env=env)


def test_registry_entries_name_their_classes():
    for name in ALGORITHMS:
        assert get_algorithm(name).name == name
    with pytest.raises(ValueError, match="choose one of"):
        get_algorithm("nomatch")


def test_a_recipe_value_may_follow_the_label_count():
    """SimMatch's labeled bank holds one entry per labeled sample (USB's K): its recipes set it per label count."""
    assert [RECIPES[f"cifar10_simmatch_{n}"]["algo.bank_size"] for n in (40, 250, 4000)] == [40, 250, 4000]
    cfg = make_config({}, "cifar10_simmatch_250")
    assert cfg.algo.bank_size == 250 and cfg.data.num_labels == 250
