"""sparsetrain: train neural networks in time and memory proportional to what is nonzero."""

__version__ = "0.1.0"

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
