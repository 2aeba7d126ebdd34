"""Fixtures shared by the engine tests: an Engine on the bundled configs, CPU, temporary roots."""

from __future__ import annotations

import pytest
from helpers.engines import bundled_engine


@pytest.fixture
def engine(tmp_path):
    with bundled_engine(tmp_path) as eng:
        yield eng
