"""Every named recipe applies through the real option path (names and types checked by the config) and
validates; the published protocol's shared settings are what the papers state."""
import pytest

from fastssl.algorithms import ALGORITHMS
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
