"""Parallel truly sparse training: WASAP-SGD and WASSP-SGD on Ray (SPEC 1.8).

Ray is optional (``pip install -e ".[parallel]"``); :mod:`.state`, :mod:`.server` and
:mod:`.worker` hold the algorithm in plain NumPy and are usable (and tested) without it.
"""

from .runner import MODES, ParallelConfig, ParallelTrainer, RaySession
from .state import average_models, retain_valid

__all__ = ["MODES", "ParallelConfig", "ParallelTrainer", "RaySession", "average_models",
           "retain_valid"]
