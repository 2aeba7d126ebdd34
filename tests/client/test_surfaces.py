"""The sync SDK and its asyncio twin offer the same operations with the same signatures.

Each sync class is compared with its async twin: the same public methods, the same parameters (names,
kinds, defaults, annotations) and the same return annotation once sync class names are read as their
async twins. Async methods are coroutines, except the few that return at once on both surfaces.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from typing import Any

import pytest

from cuvis_cluster import client as sync
from cuvis_cluster.client import aio

TWINS = {
    "Client": "AsyncClient",
    "Session": "AsyncSession",
    "TrainStream": "AsyncTrainStream",
    "CallHandle": "AsyncCallHandle",
}

#: Methods that send nothing or only start something, so they are plain methods on both surfaces:
#: ``session(id)`` makes a handle, ``train()`` returns a stream to iterate, ``cancel()``/``done()`` act
#: on a call already in flight.
NOT_COROUTINES = {"session", "train", "cancel", "done"}

#: Documented surface-only helpers: the sync context-manager/iterator dunders have async counterparts
#: (``__aenter__``/``__aexit__``, ``__aiter__``/``__anext__``, ``aclose`` for ``contextlib.aclosing``).
ASYNC_ONLY = {"aclose"}


def _public_methods(cls: type) -> dict[str, object]:
    return {
        name: member
        for name, member in inspect.getmembers(cls)
        if not name.startswith("_") and (inspect.isfunction(member) or isinstance(member, property))
    }


def _as_async(annotation: object) -> str:
    text = str(annotation)
    return re.sub(r"\b(" + "|".join(TWINS) + r")\b", lambda m: TWINS[m.group(1)], text)


def _same_signature(sync_fn: Callable[..., Any], async_fn: Callable[..., Any]) -> None:
    sync_sig, async_sig = inspect.signature(sync_fn), inspect.signature(async_fn)
    sync_params = [(p.name, p.kind, p.default, _as_async(p.annotation)) for p in sync_sig.parameters.values()]
    async_params = [(p.name, p.kind, p.default, str(p.annotation)) for p in async_sig.parameters.values()]
    assert async_params == sync_params
    assert str(async_sig.return_annotation) == _as_async(sync_sig.return_annotation)


@pytest.mark.parametrize("sync_name", sorted(TWINS))
def test_async_twin_offers_every_operation_with_the_same_signature(sync_name):
    sync_cls = getattr(sync, sync_name)
    async_cls = getattr(aio, TWINS[sync_name])
    sync_methods, async_methods = _public_methods(sync_cls), _public_methods(async_cls)
    assert set(async_methods) - ASYNC_ONLY == set(sync_methods)
    for name, sync_member in sync_methods.items():
        async_member = async_methods[name]
        if isinstance(sync_member, property):
            assert isinstance(async_member, property), name
            continue
        _same_signature(sync_member, async_member)
        assert inspect.iscoroutinefunction(async_member) == (name not in NOT_COROUTINES), name


def test_both_surfaces_manage_their_resources_the_same_way():
    for sync_name, async_name in TWINS.items():
        sync_cls, async_cls = getattr(sync, sync_name), getattr(aio, async_name)
        if hasattr(sync_cls, "__enter__"):
            assert inspect.iscoroutinefunction(async_cls.__aenter__)
            assert inspect.iscoroutinefunction(async_cls.__aexit__)
        if hasattr(sync_cls, "__next__"):
            assert inspect.iscoroutinefunction(async_cls.__anext__) and hasattr(async_cls, "__aiter__")


def test_connect_takes_the_same_arguments():
    _same_signature(sync.connect, aio.connect)
    assert "options" in inspect.signature(aio.connect).parameters
