"""``python -m sparsetrain.sublinear train|bench ...``."""

from .cli import main

raise SystemExit(main())
