"""Where the tests find the offline copies of the real datasets."""

from __future__ import annotations

import os
from pathlib import Path


def shared_datasets_dir() -> Path:
    """``$SPARSETRAIN_TEST_DATA`` if set, else ``shared/datasets`` beside the repository
    (CI clones the repository with ``shared/`` next to it)."""
    env = os.environ.get("SPARSETRAIN_TEST_DATA")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[1].parent / "shared" / "datasets"
