"""The asyncio twin against the in-process test server."""

from __future__ import annotations

import asyncio
import contextlib

import grpc
import numpy as np
import pytest

from cuvis_cluster import errors
from cuvis_cluster.client import aio, pb


def test_calls_retries_sessions_and_inference(fake):
    fake.service.fail_next["ListAvailablePipelines"] = [(grpc.StatusCode.UNAVAILABLE, "restarting")] * 2

    async def scenario():
        async with aio.connect(fake.address, timeout=10) as client:
            assert await client.health() == "SERVING"
            assert len(await client.list_pipelines()) == 2
            async with await client.create_session() as session:
                assert session.id in fake.service.sessions
                await session.configure_trainrun("rx_statistical", ["steps=3"])
                statuses = [resp.status async for resp in session.train()]
                result = await session.infer(np.ones((4, 4, 61), np.uint16))
            return session, statuses, result

    session, statuses, result = asyncio.run(scenario())
    assert fake.service.calls["ListAvailablePipelines"] == 3
    assert statuses == [pb.TRAIN_STATUS_RUNNING] * 3 + [pb.TRAIN_STATUS_COMPLETE]
    assert result["rx.scores"].shape == (1, 4, 4, 1)
    assert session.closed and not fake.service.sessions


def test_early_stop_and_leaving_the_loop_cancel_the_run(fake):
    async def scenario(use_callback: bool):
        async with aio.connect(fake.address) as client, await client.create_session() as session:
            await session.configure_trainrun("rx_statistical", ["steps=1000", "delay=0.02"])
            if use_callback:
                seen = [r async for r in session.train(early_stop=lambda r: r.context.global_step >= 2)]
                return len(seen)
            async with contextlib.aclosing(session.train()) as stream:
                async for resp in stream:
                    if resp.context.global_step == 2:
                        break
            return 2

    assert asyncio.run(scenario(True)) == 2
    assert fake.service.train_cancelled.wait(5)
    fake.service.train_cancelled.clear()
    asyncio.run(scenario(False))
    assert fake.service.train_cancelled.wait(5)


def test_errors_are_domain_exceptions(fake):
    async def scenario():
        async with aio.connect(fake.address) as client:
            await client.session("ghost").resolve_config("trainrun", "x")

    with pytest.raises(errors.NotFound, match="ghost") as info:
        asyncio.run(scenario())
    assert info.value.code is grpc.StatusCode.NOT_FOUND and info.value.method == "ResolveConfig"
