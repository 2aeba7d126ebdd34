"""Fixtures of the example and end-to-end CLI tests (see clusters.py)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from clusters import module_cluster  # noqa: F401  (fixture)
