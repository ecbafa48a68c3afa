"""Every Zoo A recipe names real options with values of the right type (algorithm fields through the
algorithm's Config, other sections through their dataclass)."""
import dataclasses

import pytest

from fastssl.algorithms import get_algorithm
from fastssl.algorithms.base import config_from_dict
from fastssl.config import DataConfig
from fastssl.zoo_recipes_a import RECIPES


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_recipe_applies(name):
    recipe = dict(RECIPES[name])
    cls = get_algorithm(recipe.pop("algo.name"))
    algo = {k.partition(".")[2]: v for k, v in recipe.items() if k.startswith("algo.")}
    cfg = config_from_dict(cls.Config, algo)
    for field, value in algo.items():
        assert type(getattr(cfg, field)) is type(dataclasses.asdict(cls.Config())[field])
    data_fields = {f.name for f in dataclasses.fields(DataConfig)}
    for key in recipe:
        if key.startswith("data."):
            assert key.partition(".")[2] in data_fields
