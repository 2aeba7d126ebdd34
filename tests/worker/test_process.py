"""The ``cuvis-worker`` process as an operator sees it: health, reflection, metrics, expiry, shutdown."""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import threading
from pathlib import Path

import grpc
import pytest
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2
from helpers import procs
from helpers.cuvis import SMALL_DATA, load_pipeline, pipeline_of, resolve, set_trainrun, train_frames

from cuvis_cluster.wire.pb import pb, pb_grpc

pytestmark = pytest.mark.integration

PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"


def metric_value(text: str, name: str, labels: str = "") -> float | None:
    pattern = re.escape(name + (f"{{{labels}}}" if labels else "")) + r" ([0-9.e+-]+)$"
    match = re.search(pattern, text, re.M)
    return float(match.group(1)) if match else None


# ----------------------------------------------------------------------------------- grpcurl and reflection


def test_grpcurl_lists_describes_and_checks_health(worker):
    listed = procs.grpcurl("-plaintext", worker.address, "list")
    assert listed.returncode == 0, listed.stderr
    services = set(listed.stdout.split())
    assert {
        "cuvis_ai.v1.CuvisAIService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    } <= services

    described = procs.grpcurl("-plaintext", worker.address, "describe", "cuvis_ai.v1.CuvisAIService")
    assert described.returncode == 0, described.stderr
    rpcs = re.findall(r"rpc (\w+) \(", described.stdout)
    assert len(rpcs) == 29 and "Inference" in rpcs and "Train" in rpcs

    # The proto comments reach grpcurl, and single methods can be described.
    assert "// Trains the session's pipeline and streams progress." in described.stdout
    method = procs.grpcurl("-plaintext", worker.address, "describe", "cuvis_ai.v1.CuvisAIService.Train")
    assert method.returncode == 0, method.stderr
    assert "returns ( stream .cuvis_ai.v1.TrainResponse )" in method.stdout

    message = procs.grpcurl("-plaintext", worker.address, "describe", "cuvis_ai.v1.InferenceRequest")
    assert message.returncode == 0 and "output_specs" in message.stdout

    health = procs.grpcurl("-plaintext", worker.address, "grpc.health.v1.Health/Check")
    assert health.returncode == 0 and json.loads(health.stdout) == {"status": "SERVING"}
    per_service = procs.grpcurl(
        "-plaintext",
        "-d",
        '{"service": "cuvis_ai.v1.CuvisAIService"}',
        worker.address,
        "grpc.health.v1.Health/Check",
    )
    assert json.loads(per_service.stdout) == {"status": "SERVING"}
    unknown = procs.grpcurl(
        "-plaintext", "-d", '{"service": "no.such.Service"}', worker.address, "grpc.health.v1.Health/Check"
    )
    assert unknown.returncode != 0 and "NotFound" in unknown.stderr

    created = procs.grpcurl(
        "-plaintext", "-d", "{}", worker.address, "cuvis_ai.v1.CuvisAIService/CreateSession"
    )
    assert created.returncode == 0, created.stderr
    session_id = json.loads(created.stdout)["sessionId"]  # proto3 JSON names, as grpcurl prints them
    closed = procs.grpcurl(
        "-plaintext",
        "-d",
        json.dumps({"session_id": session_id}),
        worker.address,
        "cuvis_ai.v1.CuvisAIService/CloseSession",
    )
    assert closed.returncode == 0 and json.loads(closed.stdout) == {"success": True}


@pytest.mark.parametrize("version", ["v1", "v1alpha"])
def test_reflection_serves_v1_and_v1alpha(worker, version):
    call = worker.channel().stream_stream(
        f"/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo",
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )
    requests = [
        reflection_pb2.ServerReflectionRequest(list_services=""),
        reflection_pb2.ServerReflectionRequest(file_containing_symbol="cuvis_ai.v1.CuvisAIService"),
    ]
    listing, files = list(call(iter(requests), timeout=30))
    names = {s.name for s in listing.list_services_response.service}
    assert "cuvis_ai.v1.CuvisAIService" in names and f"grpc.reflection.{version}.ServerReflection" in names
    protos = [
        descriptor_pb2.FileDescriptorProto.FromString(b)
        for b in files.file_descriptor_response.file_descriptor_proto
    ]
    service = next(s for p in protos for s in p.service if s.name == "CuvisAIService")
    assert len(service.method) == 29


# -------------------------------------------------------------------------------------------------- metrics


def test_metrics_pass_promtool_and_count_rpcs_by_code(worker, stub):
    session_id = stub.CreateSession(pb.CreateSessionRequest()).session_id
    with pytest.raises(grpc.RpcError):
        stub.CloseSession(pb.CloseSessionRequest(session_id="nope"))
    text = worker.metrics_text()
    check = subprocess.run(
        [PROMTOOL, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60
    )
    assert check.returncode == 0, check.stdout + check.stderr

    method = 'method="cuvis_ai.v1.CuvisAIService/CloseSession"'
    assert metric_value(text, "cuvis_worker_rpc_requests_total", f'code="NOT_FOUND",{method}') >= 1
    assert metric_value(text, "cuvis_worker_rpc_duration_seconds_count", method) >= 1
    assert metric_value(text, "cuvis_worker_rpc_received_bytes_total", method) > 0
    assert metric_value(text, "cuvis_worker_rpc_in_flight", method) == 0
    assert metric_value(text, "cuvis_worker_sessions") >= 1
    assert metric_value(text, "cuvis_worker_session_capacity") == 16
    assert "session" not in " ".join(re.findall(r"\{([^}]*)\}", text)).replace("CreateSession", "").replace(
        "CloseSession", ""
    ), "no session id may appear in a label"
    stub.CloseSession(pb.CloseSessionRequest(session_id=session_id))


def test_inference_and_training_metrics_move(worker, stub, trained_session):
    from helpers.cuvis import cube_batch, synthetic_frame

    stub.Inference(pb.InferenceRequest(session_id=trained_session, inputs=cube_batch(synthetic_frame())))
    text = worker.metrics_text()
    assert metric_value(text, "cuvis_worker_inference_duration_seconds_count") >= 1
    assert (
        metric_value(text, "cuvis_worker_training_runs_total", 'outcome="complete",trainer="statistical"')
        >= 1
    )
    assert metric_value(text, "cuvis_worker_training_active") == 0
    assert (
        metric_value(
            text, "cuvis_worker_rpc_sent_bytes_total", 'method="cuvis_ai.v1.CuvisAIService/Inference"'
        )
        > 0
    )


# ------------------------------------------------------------------------------------------------ idle expiry


def test_idle_sessions_expire(tmp_path):
    worker = procs.start_worker(
        tmp_path, "--idle-timeout-seconds", "1", "--reap-interval-seconds", "0.2", "--device", "cpu"
    )
    try:
        stub = pb_grpc.CuvisAIServiceStub(worker.channel())
        session_id = stub.CreateSession(pb.CreateSessionRequest()).session_id
        assert metric_value(worker.metrics_text(), "cuvis_worker_sessions") == 1
        # watch the metrics, not the session: a call on the session would count as use
        procs.wait_for(
            lambda: metric_value(worker.metrics_text(), "cuvis_worker_sessions") == 0,
            timeout=30,
            interval=0.2,
            what="the idle session to be reaped",
        )
        assert metric_value(worker.metrics_text(), "cuvis_worker_sessions_expired_total") == 1
        with pytest.raises(grpc.RpcError) as info:
            stub.CloseSession(pb.CloseSessionRequest(session_id=session_id))
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
    finally:
        worker.stop()


# ------------------------------------------------------------------------------------- start-up without cuvis


def test_worker_starts_without_libcuvis_and_cu3s_data_fails_with_install_hint(tmp_path):
    fake = tmp_path / "fake_sdk" / "cuvis"
    fake.mkdir(parents=True)
    # What a pip-installed SDK does when Cubert's native library is missing.
    (fake / "__init__.py").write_text(
        "raise ImportError('libcuvis.so.3: cannot open shared object file: No such file or directory')\n"
    )
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "session.cu3s").write_bytes(b"not really a cu3s file")
    worker = procs.start_worker(
        tmp_path, "--data-dir", str(data_dir), "--device", "cpu", env={"PYTHONPATH": str(fake.parent)}
    )
    try:
        stub = pb_grpc.CuvisAIServiceStub(worker.channel())
        session_id = stub.CreateSession(pb.CreateSessionRequest()).session_id
        trainrun = resolve(stub, session_id, "trainrun", "trainrun/rx_statistical", SMALL_DATA)
        load_pipeline(stub, session_id, pipeline_of(trainrun))
        data = {"data_module": "cu3s", "params": {"cu3s_file_path": "session.cu3s"}, "train_ids": [0]}
        request = pb.TrainRequest(
            session_id=session_id,
            trainer_type=pb.TRAINER_TYPE_STATISTICAL,
            data=pb.DataConfig(config_bytes=json.dumps(data).encode()),
        )
        messages = []
        with pytest.raises(grpc.RpcError) as info:
            for message in stub.Train(request, timeout=120):
                messages.append(message)
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "libcuvis" in info.value.details() and "pip install cuvis" in info.value.details()
        assert worker.alive()
    finally:
        worker.stop()


# ---------------------------------------------------------------------------------------------- shutdown


def test_sigterm_goes_not_serving_ends_streams_within_grace_and_exits_cleanly(tmp_path):
    worker = procs.start_worker(tmp_path, "--device", "cpu")  # --grace-seconds 5 (procs default)
    try:
        channel = worker.channel()
        stub = pb_grpc.CuvisAIServiceStub(channel)
        health = health_pb2_grpc.HealthStub(channel)
        watch = health.Watch(health_pb2.HealthCheckRequest(service=""), timeout=120)
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING

        session_id = stub.CreateSession(pb.CreateSessionRequest()).session_id
        trainrun = resolve(stub, session_id, "trainrun", "trainrun/rx_statistical", SMALL_DATA)
        trainrun["data"]["params"].update(num_frames=50000, height=16, width=16)
        train_frames(trainrun, 50000)
        set_trainrun(stub, session_id, trainrun)
        stream = stub.Train(
            pb.TrainRequest(session_id=session_id, trainer_type=pb.TRAINER_TYPE_STATISTICAL), timeout=120
        )
        assert next(stream).status == pb.TRAIN_STATUS_RUNNING
        outcome: dict = {}

        def drain_stream() -> None:
            try:
                for message in stream:
                    outcome["last"] = message
                outcome["code"] = grpc.StatusCode.OK
            except grpc.RpcError as exc:
                outcome["code"] = exc.code()

        reader = threading.Thread(target=drain_stream)
        reader.start()
        worker.proc.send_signal(signal.SIGTERM)

        statuses = []
        try:
            for update in watch:
                statuses.append(update.status)
                if update.status == health_pb2.HealthCheckResponse.NOT_SERVING:
                    break
        except grpc.RpcError:
            pass
        assert health_pb2.HealthCheckResponse.NOT_SERVING in statuses

        assert worker.proc.wait(timeout=60) == 0
        reader.join(30)
        # The long run could not finish in the 5 s grace. It is cancelled shortly before the grace ends,
        # so the client gets a final CANCELLED message and status rather than a cut-off stream.
        assert outcome.get("code") == grpc.StatusCode.CANCELLED
        assert outcome["last"].status == pb.TRAIN_STATUS_CANCELLED
        assert "shutting down" in outcome["last"].message
        log = worker.log()
        assert "SIGTERM received" in log and "cuvis-worker stopped" in log
    finally:
        worker.stop()


def test_bundled_configs_are_found_from_any_working_directory(worker, stub, session):
    assert Path(worker.log_path).parent != procs.REPO
    assert "using the bundled configs" in worker.log()
    assert resolve(stub, session, "pipeline", "rx_statistical")["metadata"]["name"] == "rx_statistical"


# ------------------------------------------------------------------------------------------ with --redis-url


def test_worker_with_redis_registers_announces_sessions_and_deregisters(tmp_path):
    import redis

    store = procs.start_redis(tmp_path)
    client = redis.Redis.from_url(f"redis://{store.address}/0", decode_responses=True)
    worker = procs.start_worker(
        tmp_path, "--redis-url", f"redis://{store.address}/0", "--heartbeat-seconds", "0.5"
    )
    try:
        workers = procs.wait_for(
            lambda: client.zrange("cuvis:workers", 0, -1), timeout=30, what="registration"
        )
        assert len(workers) == 1
        record = client.hgetall(f"cuvis:worker:{workers[0]}")
        assert (
            record["address"] == worker.address and record["capacity"] == "16" and record["draining"] == "0"
        )

        stub = pb_grpc.CuvisAIServiceStub(worker.channel())
        session_id = stub.CreateSession(
            pb.CreateSessionRequest(), metadata=[("x-cuvis-owner", "alice")]
        ).session_id
        route = client.hgetall(f"cuvis:route:{session_id}")  # written before CreateSession returned
        assert route["instance"] == workers[0] and route["owner"] == "alice"

        # a gateway routing with a stale instance id gets NOT_FOUND, never this worker's session
        with pytest.raises(grpc.RpcError) as info:
            stub.GetPipelineInputs(
                pb.GetPipelineInputsRequest(session_id=session_id),
                metadata=[("x-cuvis-worker-instance", "an-earlier-process")],
            )
        assert info.value.code() == grpc.StatusCode.NOT_FOUND and "an-earlier-process" in info.value.details()

        # Drain (the gateway's / preStop's way out): no new sessions, health NOT_SERVING, and the worker
        # leaves by itself once its last session is closed
        from cuvis_cluster.wire.gen.cuvis_cluster.internal.v1 import control_pb2, control_pb2_grpc

        control = control_pb2_grpc.WorkerControlServiceStub(worker.channel())
        drained = control.Drain(control_pb2.DrainRequest(grace_seconds=60))
        assert drained.accepted and drained.sessions == 1
        procs.wait_for(
            lambda: procs.health_status(worker.address) == health_pb2.HealthCheckResponse.NOT_SERVING,
            timeout=10,
            what="health to follow the draining flag",
        )
        with pytest.raises(grpc.RpcError) as info:
            stub.CreateSession(pb.CreateSessionRequest())
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE and "draining" in info.value.details()
        assert client.hget(f"cuvis:worker:{workers[0]}", "draining") == "1"
        stub.CloseSession(pb.CloseSessionRequest(session_id=session_id))
        assert worker.proc.wait(timeout=60) == 0
        assert not client.exists(f"cuvis:worker:{workers[0]}")
        assert not client.exists(f"cuvis:route:{session_id}")
    finally:
        client.close()
        worker.stop()
        store.stop()


def test_a_busy_port_is_a_clear_start_up_error(tmp_path):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        worker = procs.start_worker(tmp_path, "--device", "cpu", port=port, metrics=False, wait=False)
        try:
            assert worker.proc.wait(timeout=120) == 2
            assert "cannot start" in worker.log() and f"127.0.0.1:{port}" in worker.log()
        finally:
            worker.stop()
