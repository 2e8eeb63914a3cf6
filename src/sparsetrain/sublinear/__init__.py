"""Sublinear training of wide shifted-ReLU networks by activated-neuron identification.

SPEC Part 2 (2.1-2.3, 2.5): the network ``f(W, x) = m^(-1/2) sum_r a_r
relu(<w_r, x> - b)``, four fired-set indexes behind one interface
(:data:`INDEXES`), SGD dense or with identification (:func:`train_sgd`), and
the cost-per-iteration benchmark (:func:`run_sgd_bench`); SPEC 2.4: Gauss-Newton
dense, sketched and sublinear (:func:`train_gn`, :data:`GN_METHODS`, sketches in
:data:`SKETCHES`), NTK kernel regression (:func:`ntk_regression`) and the report
(:func:`run_report`).
"""

from .bench import BenchConfig, run_sgd_bench
from .data import fashion_mnist_two_class, synthetic
from .gauss_newton import GN_METHODS, DampingWarning, GNResult, train_gn
from .indexes import EXACT_INDEXES, INDEXES, FiredIndex, make_index, recall
from .network import (
    ShiftedReLUNetwork,
    default_shift,
    dense_forward,
    dense_gradient,
    gaussian_tail,
    sparse_forward,
    sparse_gradient,
)
from .ntk import NTKResult, ntk_regression
from .report import ReportConfig, run_report
from .sketch import SKETCHES
from .train import SGDResult, train_sgd

__all__ = [
    "BenchConfig",
    "DampingWarning",
    "GNResult",
    "GN_METHODS",
    "NTKResult",
    "ReportConfig",
    "SKETCHES",
    "ntk_regression",
    "run_report",
    "train_gn",
    "EXACT_INDEXES",
    "FiredIndex",
    "INDEXES",
    "SGDResult",
    "ShiftedReLUNetwork",
    "default_shift",
    "dense_forward",
    "dense_gradient",
    "fashion_mnist_two_class",
    "gaussian_tail",
    "make_index",
    "recall",
    "run_sgd_bench",
    "sparse_forward",
    "sparse_gradient",
    "synthetic",
    "train_sgd",
]
