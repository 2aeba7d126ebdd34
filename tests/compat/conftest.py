"""Fixtures of the upstream-compatibility tests: files trained by upstream's own engine (once per test
session, in a temporary directory), and our engine with that directory readable."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

import upstream_side as up  # noqa: E402
from ours_side import Ours  # noqa: E402


@pytest.fixture(scope="session")
def upstream_dir(tmp_path_factory) -> Path:
    pytest.importorskip("cuvis_ai", reason="needs the upstream extra (cuvis-ai)")
    try:
        from loguru import logger

        logger.disable("cuvis_ai")
        logger.disable("cuvis_ai_core")
    except ImportError:
        pass
    logging.getLogger("lightning").setLevel(logging.ERROR)
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    return tmp_path_factory.mktemp("upstream")


@pytest.fixture(scope="session")
def upstream_trained(upstream_dir) -> dict[str, up.Trained]:
    """RX (statistical), channel selector and Deep SVDD (statistical + 1 gradient epoch), trained and
    saved by upstream's engine."""
    return {name: up.train(name, upstream_dir / name.replace("/", "_"), epochs=1) for name in up.ROUND_TRIP}


@pytest.fixture
def ours(tmp_path, upstream_dir) -> Iterator[Ours]:
    with Ours(tmp_path / "ours", extra=[upstream_dir, up.pipeline_root()]) as engine:
        yield engine
