"""sparsetrain: train neural networks in time and memory proportional to what is nonzero."""

import os

__version__ = "0.1.0"

# Numba's OpenMP threads sleep at barriers instead of spinning (unless the user chose a
# policy). Measured with another process busy on one of the two cores: the default
# spin-then-sleep made two-thread training 6-20x slower than one thread (the spinning
# thread holds the core its partner needs); PASSIVE keeps it at one-thread speed or
# better, and costs nothing measurable on an idle machine. Read when the OpenMP pool
# starts, i.e. at the first parallel kernel, after this import.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# OpenBLAS's worker threads (NumPy's BLAS) spin for up to 2^28 cycles after each call
# before they sleep, holding the core the next Numba kernel needs. Measured on the
# sublinear SGD benchmark (m = 2^20, 2 threads): the sparse update right after a BLAS
# identification took 40.7 ms with the default and 11.2 ms with a 2^4-cycle timeout,
# while the dense BLAS baseline kept its speed (361 vs 369 ms per iteration). Read when
# OpenBLAS loads (the first NumPy import, below), so only if NumPy was not imported yet.
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

from .config import PRESETS, TrainConfig, make_config  # noqa: E402
from .errors import SparsetrainError  # noqa: E402
from .layers import SparseLinear  # noqa: E402
from .model import SparseMLP  # noqa: E402

__all__ = ["PRESETS", "SETMLPClassifier", "SETMLPRegressor", "SparseLinear", "SparseMLP",
           "SparsetrainError", "TrainConfig", "__version__", "make_config"]


def __getattr__(name):
    # The scikit-learn estimators load on first use: `import sparsetrain` (and the CLI)
    # does not pay for importing scikit-learn's estimator machinery.
    if name in ("SETMLPClassifier", "SETMLPRegressor"):
        from . import estimators

        return getattr(estimators, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
