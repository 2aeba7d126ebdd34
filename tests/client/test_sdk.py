"""The SDK against a real in-process gRPC server (``fake_server.py``): channel, retries, errors, sessions,
training streams, inference inputs and cancellation."""

from __future__ import annotations

import json
import threading
import time

import grpc
import numpy as np
import pytest
from fake_server import FakeServer

from cuvis_cluster import errors
from cuvis_cluster.client import (
    IDEMPOTENT_METHODS,
    MAX_MESSAGE_SIZE,
    InferenceResult,
    RetryPolicy,
    ServerError,
    connect,
    format_progress,
    numpy_to_proto,
    pb,
    proto_to_numpy,
    tensor_to_proto,
)
from cuvis_cluster.client._channel import build_config
from cuvis_cluster.wire import codec

# -- channel configuration --------------------------------------------------------------------------------


def test_defaults_are_plaintext_with_1gib_limits_and_retries():
    config = build_config("127.0.0.1:50050")
    options = dict(config.options())
    assert config.tls is False
    assert options["grpc.max_send_message_length"] == MAX_MESSAGE_SIZE == 1 << 30
    assert options["grpc.max_receive_message_length"] == 1 << 30
    assert options["grpc.enable_retries"] == 1
    assert "grpc.keepalive_time_ms" not in options


def test_retry_service_config_covers_only_idempotent_methods_and_unavailable():
    service_config = json.loads(dict(build_config("h:1").options())["grpc.service_config"])
    (method_config,) = service_config["methodConfig"]
    names = {n["method"] for n in method_config["name"] if n["service"] == "cuvis_ai.v1.CuvisAIService"}
    assert names == set(IDEMPOTENT_METHODS)
    assert not names & {"Train", "CreateSession", "Inference", "CloseSession", "RestoreTrainRun"}
    assert method_config["retryPolicy"]["retryableStatusCodes"] == ["UNAVAILABLE"]
    assert method_config["waitForReady"] is True


def test_retry_policy_refuses_to_retry_train():
    with pytest.raises(ValueError, match="Train"):
        RetryPolicy(methods=frozenset({"Train", "ListAvailablePipelines"}))


def test_tls_is_decided_from_scheme_and_material(tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_bytes(b"-----BEGIN CERTIFICATE-----\n")
    assert build_config("grpcs://gw.example:443").tls is True
    assert build_config("grpc://gw:1").tls is False
    with_ca = build_config("gw:443", root_certificates=ca, server_name="gateway.local")
    assert with_ca.tls is True and with_ca.root_certificates.startswith(b"-----BEGIN")
    assert dict(with_ca.options())["grpc.ssl_target_name_override"] == "gateway.local"
    with pytest.raises(ValueError, match="both client_certificate and client_key"):
        build_config("gw:443", client_certificate=ca)
    with pytest.raises(ValueError, match="tls=False"):
        build_config("gw:443", tls=False, root_certificates=ca)
    with pytest.raises(ValueError, match="cannot read the CA certificate"):
        build_config("gw:443", root_certificates=tmp_path / "missing.pem")


def test_keepalive_is_explicit():
    from cuvis_cluster.client import KeepAliveOptions

    options = dict(build_config("h:1", keepalive=KeepAliveOptions(time_s=30, timeout_s=5)).options())
    assert options["grpc.keepalive_time_ms"] == 30000
    assert options["grpc.keepalive_timeout_ms"] == 5000
    assert options["grpc.http2.max_pings_without_data"] == 0


def test_codec_helpers_are_re_exported():
    assert numpy_to_proto is codec.encode and tensor_to_proto is codec.encode
    assert proto_to_numpy is codec.decode
    cube = np.arange(24, dtype=np.uint16).reshape(2, 3, 4)
    assert np.array_equal(proto_to_numpy(numpy_to_proto(cube)), cube)


# -- errors and retries over a real channel -----------------------------------------------------------------


def test_idempotent_call_is_retried_on_unavailable(fake, client):
    fake.service.fail_next["ListAvailablePipelines"] = [(grpc.StatusCode.UNAVAILABLE, "restarting")] * 2
    pipelines = client.list_pipelines()
    assert [p.pipeline_path for p in pipelines] == ["rx_statistical.yaml", "deep_svdd.yaml"]
    assert fake.service.calls["ListAvailablePipelines"] == 3


def test_other_codes_are_not_retried(fake, client):
    fake.service.fail_next["ListAvailablePipelines"] = [(grpc.StatusCode.INVALID_ARGUMENT, "filter_tag: bad")]
    with pytest.raises(errors.InvalidArgument) as info:
        client.list_pipelines()
    assert fake.service.calls["ListAvailablePipelines"] == 1
    assert info.value.code is grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details == "filter_tag: bad" == str(info.value)
    assert info.value.method == "ListAvailablePipelines"


def test_create_session_is_not_retried(fake, client):
    fake.service.fail_next["CreateSession"] = [(grpc.StatusCode.UNAVAILABLE, "no workers")]
    with pytest.raises(errors.Unavailable, match="no workers"):
        client.create_session()
    assert fake.service.calls["CreateSession"] == 1


def test_train_is_not_retried(fake, client):
    session = client.create_session()
    session.apply_trainrun({"overrides": []})
    fake.service.fail_next["Train"] = [(grpc.StatusCode.UNAVAILABLE, "gateway lost the worker")]
    with pytest.raises(errors.Unavailable, match="gateway lost the worker") as info:
        session.train(progress=False).wait()
    assert info.value.method == "Train"
    assert fake.service.calls["Train"] == 1


def test_retries_can_be_switched_off(fake):
    fake.service.fail_next["ListAvailablePipelines"] = [(grpc.StatusCode.UNAVAILABLE, "down")]
    with connect(fake.address, retry=False) as c, pytest.raises(errors.Unavailable):
        c.list_pipelines()
    assert fake.service.calls["ListAvailablePipelines"] == 1


def test_codes_without_domain_class_raise_server_error(fake, client):
    fake.service.fail_next["GetPipelineInfo"] = [(grpc.StatusCode.INTERNAL, "bug (request id abc)")]
    with pytest.raises(ServerError, match="request id abc") as info:
        client.pipeline_info("rx_statistical.yaml")
    assert info.value.code is grpc.StatusCode.INTERNAL
    assert isinstance(info.value, errors.CuvisError)


def test_per_call_timeout_gives_deadline_exceeded():
    slow = FakeServer(slow_seconds=2.0).start()
    try:
        with connect(slow.address) as c, pytest.raises(errors.DeadlineExceeded):
            c.list_pipelines(timeout=0.2)
    finally:
        slow.stop()


def test_bearer_token_is_sent_on_every_call(fake):
    with connect(fake.address, token="s3cret") as c:
        c.list_pipelines()
        c.create_session().close()
    assert fake.service.metadata
    assert all(md.get("authorization") == "Bearer s3cret" for md in fake.service.metadata)


def test_health_and_workers(fake, client):
    assert client.health() == "SERVING"
    session = client.create_session()
    (worker,) = client.list_workers()
    assert worker.device == "cpu" and worker.sessions == 1 and list(worker.session_ids) == [session.id]


def test_unreachable_server_is_reported_with_the_address():
    with connect("127.0.0.1:1") as c, pytest.raises(errors.Unavailable, match=r"127\.0\.0\.1:1"):
        c.wait_until_ready(0.5)


# -- sessions and configs -------------------------------------------------------------------------------


def test_session_context_manager_closes_on_exit(fake, client):
    with client.create_session() as session:
        assert session.id in fake.service.sessions
    assert session.closed and session.id not in fake.service.sessions
    assert session.close() is False  # closing again is harmless


def test_session_closes_even_when_the_body_raises(fake, client):
    with pytest.raises(RuntimeError), client.create_session() as session:
        raise RuntimeError("user code failed")
    assert session.id not in fake.service.sessions


def test_unknown_session_is_not_found(client):
    ghost = client.session("no-such-session")
    with pytest.raises(errors.NotFound, match="no-such-session") as info:
        ghost.resolve_trainrun("rx_statistical")
    assert info.value.code is grpc.StatusCode.NOT_FOUND


def test_resolve_trainrun_prefixes_the_group_and_sends_overrides(client):
    with client.create_session() as s:
        config = s.resolve_trainrun("rx_statistical", ["data.batch_size=2", "training.seed=1"])
        assert config["path"] == "trainrun/rx_statistical"
        assert config["overrides"] == ["data.batch_size=2", "training.seed=1"]
        assert s.resolve_config("trainrun", "trainrun/deep_svdd")["path"] == "trainrun/deep_svdd"


def test_bad_override_is_refused_before_any_call(fake, client):
    with client.create_session() as s:
        before = fake.service.calls["ResolveConfig"]
        with pytest.raises(errors.InvalidArgument, match=r"key\.path=value") as info:
            s.resolve_trainrun("rx_statistical", ["no_equals_sign"])
        assert info.value.field == "overrides"
        assert fake.service.calls["ResolveConfig"] == before


def test_load_pipeline_from_a_local_yaml_file(tmp_path, fake, client):
    path = tmp_path / "mine.yaml"
    path.write_text("metadata: {name: mine}\nnodes: []\nconnections: []\n")
    with client.create_session() as s:
        assert s.load_pipeline(path).name == "mine"
        assert fake.service.calls["ResolveConfig"] == 0
        assert s.load_pipeline("rx_statistical").name == "rx_statistical"  # server-side name: resolved first
        assert fake.service.calls["ResolveConfig"] == 1


def test_load_weights_needs_exactly_one_source(tmp_path, client):
    weights = tmp_path / "w.pt"
    weights.write_bytes(b"\x80\x02weights")
    with client.create_session() as s:
        assert s.load_weights("trained/rx.pt") == "trained/rx.pt"
        assert s.load_weights(file=weights) == ""
        with pytest.raises(errors.InvalidArgument, match="exactly one"):
            s.load_weights()


# -- training -------------------------------------------------------------------------------------------


def test_train_yields_progress_until_complete(client):
    with client.create_session() as s:
        s.configure_trainrun("rx_statistical", ["steps=4"])
        stream = s.train("statistical", progress=False)
        messages = list(stream)
    assert [m.status for m in messages] == [pb.TRAIN_STATUS_RUNNING] * 4 + [pb.TRAIN_STATUS_COMPLETE]
    assert stream.status == "COMPLETE" and stream.messages == 5 and not stream.stopped_early
    line = format_progress(messages[1])
    assert line.startswith("RUNNING train train_progress")
    assert "frames 2/4" in line and "loss total=0.5" in line and "iou=0.25" in line and "\n" not in line


def test_format_progress_of_the_terminal_message():
    resp = pb.TrainResponse(status=pb.TRAIN_STATUS_ERROR, message="Training failed:\n  CUDA out of memory")
    assert format_progress(resp) == "ERROR | Training failed: CUDA out of memory"


def test_early_stop_callback_cancels_the_stream_on_the_server(fake, client):
    with client.create_session() as s:
        s.configure_trainrun("rx_statistical", ["steps=1000", "delay=0.02"])
        stream = s.train(early_stop=lambda resp: resp.context.global_step >= 3, progress=False)
        seen = [resp.context.global_step for resp in stream]
        assert seen == [1, 2, 3]
        assert stream.stopped_early and stream.cancelled and stream.status == "CANCELLED"
        assert fake.service.train_cancelled.wait(5), "the server never saw the cancellation"
        assert s.train_status().status == pb.TRAIN_STATUS_RUNNING  # the session keeps answering


def test_breaking_out_of_the_loop_cancels_the_run(fake, client):
    with client.create_session() as s:
        s.configure_trainrun("rx_statistical", ["steps=1000", "delay=0.02"])
        for resp in s.train(progress=False):
            if resp.context.global_step == 2:
                break
        assert fake.service.train_cancelled.wait(5)


def test_cancel_from_another_thread(fake, client):
    with client.create_session() as s:
        s.configure_trainrun("rx_statistical", ["steps=1000", "delay=0.02"])
        stream = s.train(progress=False)
        fake.service.train_started.wait(5)
        threading.Timer(0.2, stream.cancel).start()
        count = sum(1 for _ in stream)
        assert 0 < count < 1000 and stream.cancelled
        assert fake.service.train_cancelled.wait(5)


def test_training_failure_raises_the_domain_error(client):
    with client.create_session() as s:
        s.configure_trainrun("rx_statistical", ["steps=5", "fail_at=2"])
        stream = s.train(progress=False)
        received = []
        with pytest.raises(errors.InvalidArgument, match="loss_nodes") as info:
            for resp in stream:
                received.append(resp)
        # The ERROR message is yielded, then the call's status arrives as the domain error.
        assert [r.status for r in received] == [pb.TRAIN_STATUS_RUNNING] * 2 + [pb.TRAIN_STATUS_ERROR]
        assert info.value.method == "Train" and info.value.code is grpc.StatusCode.INVALID_ARGUMENT


def test_train_without_config_is_failed_precondition(client):
    with client.create_session() as s, pytest.raises(errors.FailedPrecondition, match="SetTrainRunConfig"):
        s.train(progress=False).wait()


def test_unknown_trainer_name(client):
    with client.create_session() as s, pytest.raises(errors.InvalidArgument, match="statistical"):
        s.train("magic")


# -- inference ------------------------------------------------------------------------------------------


def _cube(h=8, w=6, c=61, seed=0):
    return np.random.default_rng(seed).integers(0, 4000, size=(h, w, c), dtype=np.uint16)


def test_infer_numpy_hwc_cube(client):
    cube = _cube()
    with client.create_session() as s:
        s.load_pipeline({"metadata": {"name": "x"}, "nodes": [], "connections": []})
        result = s.infer(cube, np.linspace(430, 910, 61).astype(np.float32))
    assert isinstance(result, InferenceResult)
    assert set(result) == {"rx.scores", "decider.decisions"}
    name, scores = result.scores()
    assert name == "rx.scores" and scores.shape == (1, 8, 6, 1)
    np.testing.assert_allclose(scores[0, ..., 0], cube.astype(np.float32).mean(-1), rtol=1e-6)
    assert result.decisions()[1].dtype == np.bool_
    assert result.metrics == {"metrics.frames": 1.0}


def test_infer_output_specs_filter(client):
    with client.create_session() as s:
        s.load_pipeline({"metadata": {"name": "x"}})
        assert list(s.infer(_cube(), output_specs=["scores"])) == ["rx.scores"]


def test_infer_from_npz_file(tmp_path, client):
    path = tmp_path / "frame.npz"
    np.savez(path, cube=_cube(4, 5), wavelengths=np.linspace(430, 910, 61), mask=np.zeros((4, 5), np.int32))
    with client.create_session() as s:
        s.load_pipeline({"metadata": {"name": "x"}})
        assert s.infer(file=path)["rx.scores"].shape == (1, 4, 5, 1)


def test_npz_without_cube_is_a_clear_local_error(tmp_path, client):
    path = tmp_path / "bad.npz"
    np.savez(path, data=np.zeros(3))
    with client.create_session() as s, pytest.raises(errors.InvalidArgument, match=r"no 'cube' array.*data"):
        s.infer(file=path)


def test_cu3s_without_the_cuvis_sdk_says_what_to_install(tmp_path, client):
    try:
        import cuvis  # noqa: F401

        pytest.skip("the cuvis SDK is installed here")
    except Exception:
        pass
    path = tmp_path / "recording.cu3s"
    path.write_bytes(b"not really a session file")
    with client.create_session() as s, pytest.raises(errors.FailedPrecondition, match="cuvis SDK") as info:
        s.infer(file=path)
    assert ".npz" in str(info.value)


def test_inference_errors_name_the_input(client):
    with client.create_session() as s, pytest.raises(errors.FailedPrecondition, match="LoadPipeline"):
        s.infer(_cube())


def test_infer_future_result_and_cancel(client):
    with client.create_session() as s:
        s.load_pipeline({"metadata": {"name": "x"}})
        handle = s.infer_future(_cube())
        assert handle.result(timeout=10)["rx.scores"].shape == (1, 8, 6, 1)
        assert handle.done()
        handle2 = s.infer_future(_cube())
        handle2.cancel()
        try:
            handle2.result(timeout=10)
        except errors.Cancelled as exc:
            assert exc.code is grpc.StatusCode.CANCELLED
        # else: it finished before the cancel arrived, which is allowed


def test_concurrent_sessions_from_threads(fake, client):
    results: dict[int, float] = {}

    def run(i: int) -> None:
        with client.create_session() as s:
            s.load_pipeline({"metadata": {"name": f"p{i}"}})
            results[i] = float(s.infer(np.full((2, 2, 3), i, np.float32))["rx.scores"].mean())

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert results == {0: 0.0, 1: 1.0, 2: 2.0, 3: 3.0}
    assert not fake.service.sessions


def test_restore_returns_a_session_with_its_config(fake, client):
    with client.restore_trainrun("runs/rx.yaml", weights_path="runs/rx.pt", strict=True) as s:
        assert s.id in fake.service.sessions and s.trainrun == {"name": "restored", "overrides": []}
        assert list(s.inputs()) == ["cube"] and list(s.outputs()) == ["rx.scores"]
    with pytest.raises(errors.NotFound):
        client.restore_trainrun("runs/missing.yaml")


def test_wait_for_ready_idempotent_call_waits_for_a_late_server():
    """An idempotent call made while nothing listens completes once the server comes up (within its
    deadline); a non-idempotent one fails fast with UNAVAILABLE."""
    from helpers.procs import free_port

    port = free_port()
    with connect(f"127.0.0.1:{port}", timeout=20) as c:
        with pytest.raises(errors.Unavailable):
            c.create_session()
        late = FakeServer(port)
        # The server comes up a second from now, normally while the call below already waits for it.
        threading.Timer(1.0, late.start).start()
        try:
            pipelines = c.list_pipelines()
            # It waited for the server instead of failing, and the late server is the one that answered.
            assert late.service.calls["ListAvailablePipelines"] >= 1
            assert [p.pipeline_path for p in pipelines] == ["rx_statistical.yaml", "deep_svdd.yaml"]
        finally:
            time.sleep(0.1)
            late.stop()
