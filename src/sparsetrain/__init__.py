"""sparsetrain: train neural networks in time and memory proportional to what is nonzero."""

__version__ = "0.1.0"

from .config import PRESETS, TrainConfig, make_config  # noqa: E402
from .errors import SparsetrainError  # noqa: E402
from .layers import SparseLinear  # noqa: E402
from .model import SparseMLP  # noqa: E402

__all__ = ["PRESETS", "SparseLinear", "SparseMLP", "SparsetrainError", "TrainConfig",
           "__version__", "make_config"]
