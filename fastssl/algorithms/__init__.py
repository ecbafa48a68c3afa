"""Algorithm registry. Adding an algorithm: one file, one line here, one test file.

Lazy: the registry maps names to "module:Class" and imports an algorithm's module when it is asked for, so
parsing options (or listing names) does not import all the algorithms, their kernels and torch.
"""
from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping

_REGISTRY: dict[str, str] = {
    "adamatch": "adamatch:AdaMatch",
    "dash": "dash:Dash",
    "defixmatch": "defixmatch:DeFixMatch",
    "entmin": "entmin:EntMin",
    "fixmatch": "fixmatch:FixMatch",
    "flexmatch": "flexmatch:FlexMatch",
    "freematch": "freematch:FreeMatch",
    "ict": "ict:ICT",
    "meanteacher": "meanteacher:MeanTeacher",
    "mixmatch": "mixmatch:MixMatch",
    "pimodel": "pimodel:PiModel",
    "pseudolabel": "pseudolabel:PseudoLabel",
    "remixmatch": "remixmatch:ReMixMatch",
    "softmatch": "softmatch:SoftMatch",
    "supervised": "supervised:Supervised",
    "uda": "uda:UDA",
    "vat": "vat:VAT",
}
"""--algo.name → "module:Class" under fastssl.algorithms"""


def get_algorithm(name: str):
    """The algorithm class registered as `name` (imports its module)."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown algorithm --algo.name={name!r}; choose one of: {', '.join(sorted(_REGISTRY))}")
    module, cls = _REGISTRY[name].split(":")
    return getattr(importlib.import_module(f"{__name__}.{module}"), cls)


class _Algorithms(Mapping):
    """name → class, importing each algorithm's module on first access."""

    def __getitem__(self, name: str):
        if name not in _REGISTRY:
            raise KeyError(name)
        return get_algorithm(name)

    def __iter__(self) -> Iterator[str]:
        return iter(_REGISTRY)

    def __len__(self) -> int:
        return len(_REGISTRY)


ALGORITHMS: Mapping[str, type] = _Algorithms()
_BASE = ("Algorithm", "AlgorithmConfig", "StepOutput", "forward_cat")


def __getattr__(name: str):
    """`Algorithm`, `AlgorithmConfig`, ... from base.py, and the algorithm classes by class name, on first use."""
    if name in _BASE:
        return getattr(importlib.import_module(f"{__name__}.base"), name)
    for key, target in _REGISTRY.items():
        if target.split(":")[1] == name:
            return get_algorithm(key)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["ALGORITHMS", "Algorithm", "AlgorithmConfig", "StepOutput", "forward_cat", "get_algorithm"]
