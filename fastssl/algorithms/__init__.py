"""Algorithm registry: `--algo.name` → "module:Class", imported on first use (`get_algorithm`).

Listing the names (`--help`, `fastssl info`, recipe names) imports no algorithm module; building or
configuring one imports its module (torch only: the fused kernels, and Triton, are imported at the first
loss computation). Adding an algorithm: its module, one line here, its test (README, "Adding an algorithm").
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fastssl.algorithms.base import Algorithm, AlgorithmConfig

ALGORITHMS: dict[str, str] = {
    "fixmatch": "fastssl.algorithms.fixmatch:FixMatch",
    "supervised": "fastssl.algorithms.supervised:Supervised",
    "flexmatch": "fastssl.algorithms.flexmatch:FlexMatch",
    "freematch": "fastssl.algorithms.freematch:FreeMatch",
    "softmatch": "fastssl.algorithms.softmatch:SoftMatch",
    "uda": "fastssl.algorithms.uda:UDA",
    "adamatch": "fastssl.algorithms.adamatch:AdaMatch",
    "dash": "fastssl.algorithms.dash:Dash",
    "pseudolabel": "fastssl.algorithms.pseudolabel:PseudoLabel",
    "defixmatch": "fastssl.algorithms.defixmatch:DeFixMatch",
    "entmin": "fastssl.algorithms.entmin:EntMin",
    "pimodel": "fastssl.algorithms.pimodel:PiModel",
    "meanteacher": "fastssl.algorithms.meanteacher:MeanTeacher",
    "mixmatch": "fastssl.algorithms.mixmatch:MixMatch",
    "remixmatch": "fastssl.algorithms.remixmatch:ReMixMatch",
    "vat": "fastssl.algorithms.vat:VAT",
    "ict": "fastssl.algorithms.ict:ICT",
    "refixmatch": "fastssl.algorithms.refixmatch:ReFixMatch",
    "dst": "fastssl.algorithms.dst:DST",
    "selftuning": "fastssl.algorithms.selftuning:SelfTuning",
    "mpl": "fastssl.algorithms.mpl:MPL",
    "sequencematch": "fastssl.algorithms.sequencematch:SequenceMatch",
    "comatch": "fastssl.algorithms.comatch:CoMatch",
    "crmatch": "fastssl.algorithms.crmatch:CRMatch",
    "simmatch": "fastssl.algorithms.simmatch:SimMatch",
}
"""name → "module:Class"; the order is the listing order (`fastssl info`, recipes)"""


def __getattr__(name: str) -> Any:
    """`Algorithm` and `AlgorithmConfig` load with the contract (and torch) on first use: listing names
    (`fastssl info`, `--help`, recipe names) imports neither."""
    if name in ("Algorithm", "AlgorithmConfig"):
        from fastssl.algorithms import base

        return getattr(base, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def get_algorithm(name: str) -> "type[Algorithm]":
    """The algorithm class registered as `name`, importing its module."""
    try:
        path = ALGORITHMS[name]
    except KeyError:
        raise ValueError(f"unknown algorithm --algo.name={name!r}; choose one of: {', '.join(sorted(ALGORITHMS))}") from None
    module, _, cls_name = path.partition(":")
    cls = getattr(importlib.import_module(module), cls_name)
    if cls.name != name:
        raise RuntimeError(f"registry entry {name!r} → {path} names a class whose `name` is {cls.name!r}; make them agree")
    return cls


__all__ = ["ALGORITHMS", "Algorithm", "AlgorithmConfig", "get_algorithm"]
