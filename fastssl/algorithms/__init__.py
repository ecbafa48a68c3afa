"""Algorithm registry. Adding an algorithm: one file, one import line here, one test file."""
from __future__ import annotations

from fastssl.algorithms.base import Algorithm, AlgorithmConfig, StepOutput, forward_cat
from fastssl.algorithms.fixmatch import FixMatch
from fastssl.algorithms.ict import ICT
from fastssl.algorithms.meanteacher import MeanTeacher
from fastssl.algorithms.mixmatch import MixMatch
from fastssl.algorithms.pimodel import PiModel
from fastssl.algorithms.remixmatch import ReMixMatch
from fastssl.algorithms.supervised import Supervised
from fastssl.algorithms.vat import VAT

ALGORITHMS: dict[str, type[Algorithm]] = {cls.name: cls for cls in (
    FixMatch,
    ICT,
    MeanTeacher,
    MixMatch,
    PiModel,
    ReMixMatch,
    Supervised,
    VAT,
)}


def get_algorithm(name: str) -> type[Algorithm]:
    try:
        return ALGORITHMS[name]
    except KeyError:
        raise ValueError(f"unknown algorithm --algo.name={name!r}; choose one of: {', '.join(sorted(ALGORITHMS))}") from None


__all__ = ["ALGORITHMS", "Algorithm", "AlgorithmConfig", "StepOutput", "forward_cat", "get_algorithm"]
