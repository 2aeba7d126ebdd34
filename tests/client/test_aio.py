"""The asyncio twin against the in-process test server."""

from __future__ import annotations

import asyncio
import contextlib

import grpc
import numpy as np
import pytest

from cuvis_cluster import errors
from cuvis_cluster.client import aio, pb, read_inputs


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


# -- operations the async surface shares with the sync one --------------------------------------------------


def test_discovery_workers_and_readiness(fake):
    async def scenario():
        async with aio.connect(
            fake.address, timeout=10, options=[("grpc.primary_user_agent", "aio-test")]
        ) as c:
            await c.wait_until_ready(5)
            tagged = await c.list_pipelines("gradient")
            info = await c.pipeline_info("rx_statistical.yaml")
            svg = await c.visualize_config({"nodes": []})
            session = await c.create_session()
            workers = await c.list_workers()
            await session.close()
            with pytest.raises(errors.NotFound, match=r"missing\.yaml") as missing:
                await c.pipeline_info("missing.yaml")
            return tagged, info, svg, session, workers, missing.value

    tagged, info, svg, session, workers, missing = asyncio.run(scenario())
    assert [p.pipeline_path for p in tagged] == ["deep_svdd.yaml"]
    assert info.resolved_path.endswith("rx_statistical.yaml") and "rx_statistical" in info.yaml_content
    assert b"<svg" in svg
    assert list(workers[0].session_ids) == [session.id]
    assert missing.method == "GetPipelineInfo" and missing.code is grpc.StatusCode.NOT_FOUND


def test_unreachable_server_is_reported_with_the_address():
    async def scenario():
        async with aio.connect("127.0.0.1:1") as c:
            await c.wait_until_ready(0.5)

    with pytest.raises(errors.Unavailable, match=r"127\.0\.0\.1:1"):
        asyncio.run(scenario())


def test_restore_weights_specs_and_saving(tmp_path, fake):
    weights = tmp_path / "w.pt"
    weights.write_bytes(b"\x80\x02weights")

    async def scenario():
        async with aio.connect(fake.address, token="s3cret") as c:
            async with await c.restore_trainrun("runs/rx.yaml", weights_path="runs/rx.pt", strict=True) as s:
                restored = s.trainrun
                specs = list(await s.inputs()), list(await s.outputs())
                loaded = [await s.load_weights("trained/rx.pt"), await s.load_weights(file=weights)]
                with pytest.raises(errors.InvalidArgument, match="exactly one"):
                    await s.load_weights()
                saved = await s.save_trainrun("runs/again", save_weights=False)
                stop = await s.stop_train()
            return restored, specs, loaded, saved, stop

    restored, specs, loaded, saved, stop = asyncio.run(scenario())
    assert restored == {"name": "restored", "overrides": []}
    assert specs == (["cube"], ["rx.scores"])
    assert loaded == ["trained/rx.pt", ""]
    assert saved.trainrun_path == "/out/runs/again.yaml" and saved.weights_path == ""
    assert stop.accepted is False
    assert not fake.service.sessions
    assert all(md.get("authorization") == "Bearer s3cret" for md in fake.service.metadata)


def test_pipeline_sources_and_inference_variants(tmp_path, fake):
    path = tmp_path / "mine.yaml"
    path.write_text("metadata: {name: mine}\nnodes: []\nconnections: []\n")
    cube = np.arange(4 * 5 * 61, dtype=np.uint16).reshape(4, 5, 61)

    async def scenario():
        async with aio.connect(fake.address) as c, await c.create_session() as s:
            names = [(await s.load_pipeline(path)).name, (await s.load_pipeline("rx_statistical")).name]
            frames = read_inputs(_npz(tmp_path, cube))
            from_frames = await s.infer_frames(frames, output_specs=["scores"])
            handle = await s.infer_future(cube, mask=np.zeros((4, 5), np.int32))
            from_future = await handle.result(timeout=10)
            return names, from_frames, from_future, handle.done()

    names, from_frames, from_future, done = asyncio.run(scenario())
    assert names == ["mine", "rx_statistical"]
    assert fake.service.calls["ResolveConfig"] == 1  # only the server-side name was resolved
    assert list(from_frames) == ["rx.scores"]
    np.testing.assert_allclose(from_future["rx.scores"][0, ..., 0], cube.astype(np.float32).mean(-1))
    assert done


def _npz(tmp_path, cube):
    path = tmp_path / "frame.npz"
    np.savez(path, cube=cube, wavelengths=np.linspace(430, 910, cube.shape[-1]))
    return path


def test_train_stream_matches_the_sync_one(fake):
    async def scenario():
        async with aio.connect(fake.address) as c, await c.create_session() as s:
            config = await s.configure_trainrun("rx_statistical", ["steps=4"])
            stream = s.train("statistical", progress=False)
            last = await stream.wait()
            status = await s.train_status()
            await s.apply_trainrun({"overrides": ["steps=5", "fail_at=2"]})
            failing = s.train(pb.TRAINER_TYPE_STATISTICAL, progress=False)
            received = []
            with pytest.raises(errors.InvalidArgument, match="loss_nodes") as info:
                async for resp in failing:
                    received.append(resp.status)
            return config, stream, last, status, received, info.value

    config, stream, last, status, received, error = asyncio.run(scenario())
    assert config["path"] == "trainrun/rx_statistical"
    assert stream.status == "COMPLETE" and stream.messages == 5 and not stream.stopped_early
    assert last is stream.last and last.status == pb.TRAIN_STATUS_COMPLETE == status.status
    assert received == [pb.TRAIN_STATUS_RUNNING] * 2 + [pb.TRAIN_STATUS_ERROR]
    assert error.method == "Train" and error.code is grpc.StatusCode.INVALID_ARGUMENT


def test_cancelled_stream_and_future_end_like_the_sync_ones(fake):
    async def scenario():
        async with aio.connect(fake.address) as c, await c.create_session() as s:
            await s.configure_trainrun("rx_statistical", ["steps=1000", "delay=0.02"])
            stream = s.train(early_stop=lambda r: r.context.global_step >= 3, progress=False)
            steps = [resp.context.global_step async for resp in stream]
            await s.load_pipeline({"metadata": {"name": "x"}})
            handle = await s.infer_future(np.ones((8, 6, 61), np.uint16))
            handle.cancel()
            try:
                await handle.result(timeout=10)
                cancelled = None  # it finished before the cancel arrived, which is allowed
            except errors.Cancelled as exc:
                cancelled = exc
            return steps, stream, cancelled

    steps, stream, cancelled = asyncio.run(scenario())
    assert steps == [1, 2, 3]
    assert stream.stopped_early and stream.cancelled and stream.status == "CANCELLED"
    assert fake.service.train_cancelled.wait(5)
    assert cancelled is None or cancelled.code is grpc.StatusCode.CANCELLED


def test_unknown_trainer_is_refused_before_any_call(fake):
    async def scenario():
        async with aio.connect(fake.address) as c:
            c.session("any").train("magic")

    with pytest.raises(errors.InvalidArgument, match="statistical"):
        asyncio.run(scenario())
    assert fake.service.calls["Train"] == 0
