"""Algorithm registry. Adding an algorithm: one file, one import line here, one test file."""
from __future__ import annotations

from fastssl.algorithms.adamatch import AdaMatch
from fastssl.algorithms.base import Algorithm, AlgorithmConfig, StepOutput, forward_cat
from fastssl.algorithms.dash import Dash
from fastssl.algorithms.defixmatch import DeFixMatch
from fastssl.algorithms.entmin import EntMin
from fastssl.algorithms.fixmatch import FixMatch
from fastssl.algorithms.flexmatch import FlexMatch
from fastssl.algorithms.freematch import FreeMatch
from fastssl.algorithms.ict import ICT
from fastssl.algorithms.meanteacher import MeanTeacher
from fastssl.algorithms.mixmatch import MixMatch
from fastssl.algorithms.pimodel import PiModel
from fastssl.algorithms.pseudolabel import PseudoLabel
from fastssl.algorithms.remixmatch import ReMixMatch
from fastssl.algorithms.softmatch import SoftMatch
from fastssl.algorithms.supervised import Supervised
from fastssl.algorithms.uda import UDA
from fastssl.algorithms.vat import VAT

ALGORITHMS: dict[str, type[Algorithm]] = {cls.name: cls for cls in (
    AdaMatch, Dash, DeFixMatch, EntMin, FixMatch, FlexMatch, FreeMatch, ICT, MeanTeacher, MixMatch, PiModel,
    PseudoLabel, ReMixMatch, SoftMatch, Supervised, UDA, VAT,
)}


def get_algorithm(name: str) -> type[Algorithm]:
    try:
        return ALGORITHMS[name]
    except KeyError:
        raise ValueError(f"unknown algorithm --algo.name={name!r}; choose one of: {', '.join(sorted(ALGORITHMS))}") from None


__all__ = ["ALGORITHMS", "Algorithm", "AlgorithmConfig", "StepOutput", "forward_cat", "get_algorithm"]
