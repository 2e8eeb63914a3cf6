"""Argument checks of the sublinear subpackage, in the core's error style.

Parameters get :func:`sparsetrain.errors.param_error`'s message, ``The 'name'
parameter must be <allowed>. Got <value> instead.``; command-line options the
same sentence with ``option``; feature matrices the core's
:func:`sparsetrain.data.check_X`.  Checks run at the boundary (public
functions, constructors, the CLI), never inside a kernel.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..data import check_X
from ..errors import SparsetrainError, param_error

__all__ = ["invalid", "check_int", "check_float", "check_choice", "check_xy"]


class _Shown(str):
    """Text shown as it is where the message would show ``repr(value)`` (e.g. ``shape (3, 4)``)."""

    def __repr__(self) -> str:
        return str(self)


_INTERVALS = {
    "(0, inf)": lambda v: v > 0,
    "[0, inf)": lambda v: v >= 0,
    "(0, 1)": lambda v: 0 < v < 1,
}


def invalid(
    name: str, allowed: str, got: Any, *, shown: str | None = None, kind: str = "parameter", fix: str = ""
) -> SparsetrainError:
    """The error for a bad value: ``The 'name' <kind> must be <allowed>. Got <value> instead.``

    ``got`` is shown by ``repr`` unless ``shown`` gives the text (e.g. ``"shape (3, 4)"``);
    ``fix`` is appended as a last sentence.
    """
    got = got if shown is None else _Shown(shown)
    if kind == "parameter":
        return param_error(name, allowed, got, fix=fix)
    return SparsetrainError(
        f"The '{name}' {kind} must be {allowed}. Got {got!r} instead." + (f" {fix}" if fix else "")
    )


def check_int(name: str, value: Any, minimum: int = 1, *, kind: str = "parameter") -> int:
    """``value`` as an ``int`` if it is an integer (not a bool) ``>= minimum``."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise invalid(name, f"an integer >= {minimum}", value, kind=kind)
    return int(value)


def check_float(name: str, value: Any, interval: str = "(0, inf)") -> float:
    """``value`` as a ``float`` if it is a finite number in ``interval`` (a key of ``_INTERVALS``)."""
    inside = _INTERVALS[interval]
    if not (isinstance(value, int | float) and math.isfinite(value) and inside(value)):
        raise invalid(name, f"a float in {interval}", value)
    return float(value)


def check_choice(name: str, value: Any, choices: Any, *, kind: str = "parameter") -> None:
    """Raise unless ``value`` is one of ``choices`` (any iterable of names, e.g. a lookup table)."""
    choices = list(choices)
    if value not in choices:
        raise invalid(name, f"one of {choices}", value, kind=kind)


def check_xy(X: Any, y: Any, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Training data for a network of input dimension ``dim``, as C-contiguous float64.

    ``X`` (n, dim) with ``n >= 1``, numeric and finite (the core's :func:`check_X`),
    and real-valued targets ``y`` (n,), finite.
    """
    X = check_X(X, "X", n_features=dim, expected=f"the network takes {dim} inputs")
    X = np.ascontiguousarray(X, np.float64)
    y = np.ascontiguousarray(y, np.float64)
    if y.shape != (X.shape[0],):
        raise invalid(
            "y", f"an array of shape ({X.shape[0]},), one target per row of X", y, shown=f"shape {y.shape}"
        )
    n_bad = y.size - int(np.count_nonzero(np.isfinite(y)))
    if n_bad:
        shown = f"{n_bad} NaN or infinite values"
        raise invalid("y", "finite", y, shown=shown, fix="Remove or impute them before training.")
    return X, y
