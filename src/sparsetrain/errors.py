"""Exceptions raised at the library boundary.

Every error a user can cause (bad option, bad data, corrupt file) is a
:class:`SparsetrainError`; the command line prints its message on one line and
exits with a nonzero status instead of showing a traceback.
"""

from __future__ import annotations


class SparsetrainError(ValueError):
    """A problem with the user's input: the message names the parameter and the fix."""


class DataNotFoundError(SparsetrainError):
    """A dataset's files are in none of the folders searched, and could not be downloaded."""


class NonFiniteLossError(SparsetrainError):
    """Training produced a NaN or infinite loss; the last good checkpoint is kept."""


def param_error(name: str, allowed: str, got, *, owner: str | None = None,
                fix: str = "") -> SparsetrainError:
    """The one message for a bad parameter value (scikit-learn style): ``The 'name'
    parameter [of owner] must be <allowed>. Got <value> instead.`` plus ``fix``."""
    of = f" of {owner}" if owner else ""
    return SparsetrainError(f"The '{name}' parameter{of} must be {allowed}. Got {got!r} instead."
                            + (f" {fix}" if fix else ""))
