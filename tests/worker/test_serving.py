"""The shared server bootstrap (common/serving.py) with real grpc servers and clients in-process."""

from __future__ import annotations

import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from helpers import procs
from prometheus_client import CollectorRegistry

from cuvis_cluster.common.serving import GrpcServer, server_credentials
from cuvis_cluster.common.telemetry import RpcMetrics

SERVICE = "test.v1.Echo"


@dataclass
class Settings:
    listen: str
    max_message_bytes: int = 1 << 20
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None


def _echo_handlers(started: threading.Event | None = None):
    def echo(request: bytes, context):
        if request == b"missing":
            context.abort(grpc.StatusCode.NOT_FOUND, "no such thing")
        if request == b"bug":
            raise ValueError("a bug")
        if request.startswith(b"sleep"):
            if started is not None:
                started.set()
            time.sleep(float(request[5:]))
        return request

    def count(request: bytes, context):
        for i in range(int(request)):
            yield str(i).encode()
            time.sleep(0.05)

    return grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Echo": grpc.unary_unary_rpc_method_handler(echo),
            "Count": grpc.unary_stream_rpc_method_handler(count),
        },
    )


def _server(settings: Settings, metrics: RpcMetrics | None = None, started=None) -> GrpcServer:
    server = GrpcServer(settings, metrics=metrics, max_workers=4, component="test")
    server.add_service(SERVICE, lambda s: s.add_generic_rpc_handlers((_echo_handlers(started),)))
    server.start()
    return server


@pytest.fixture
def metrics():
    return RpcMetrics("test", CollectorRegistry())


def _sample(metrics: RpcMetrics, name: str, **labels) -> float:
    for family in metrics.requests.collect() + metrics.latency.collect() + metrics.in_flight.collect():
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


def test_metrics_count_codes_and_malformed_body_is_invalid_argument(metrics):
    server = _server(Settings(listen="127.0.0.1:0"), metrics)
    try:
        with grpc.insecure_channel(server.address) as channel:
            echo = channel.unary_unary(f"/{SERVICE}/Echo")
            assert echo(b"hi", timeout=5) == b"hi"
            for payload, code in [(b"missing", grpc.StatusCode.NOT_FOUND), (b"bug", grpc.StatusCode.UNKNOWN)]:
                with pytest.raises(grpc.RpcError) as info:
                    echo(payload, timeout=5)
                assert info.value.code() == code
            stream = channel.unary_stream(f"/{SERVICE}/Count")(b"1000", timeout=30)
            next(stream)
            stream.cancel()
            health = health_pb2_grpc.HealthStub(channel)
            assert health.Check(health_pb2.HealthCheckRequest(service=SERVICE)).status == 1
        method = f"{SERVICE}/Echo"
        procs.wait_for(
            lambda: _sample(metrics, "test_rpc_requests_total", method=f"{SERVICE}/Count", code="CANCELLED"),
            timeout=10,
            what="the cancelled stream to be counted",
        )
        assert _sample(metrics, "test_rpc_requests_total", method=method, code="OK") == 1
        assert _sample(metrics, "test_rpc_requests_total", method=method, code="NOT_FOUND") == 1
        assert _sample(metrics, "test_rpc_requests_total", method=method, code="UNKNOWN") == 1
        assert _sample(metrics, "test_rpc_duration_seconds_count", method=method) == 3
        assert _sample(metrics, "test_rpc_in_flight", method=method) == 0
    finally:
        server.shutdown(0)


def test_health_per_service_and_graceful_shutdown_lets_running_calls_finish(metrics):
    started = threading.Event()
    server = _server(Settings(listen="127.0.0.1:0"), metrics, started)
    result: dict = {}
    with grpc.insecure_channel(server.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        assert health.Check(health_pb2.HealthCheckRequest(service="")).status == 1
        assert health.Check(health_pb2.HealthCheckRequest(service=SERVICE)).status == 1
        watch = health.Watch(health_pb2.HealthCheckRequest(service=SERVICE), timeout=30)
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
        echo = channel.unary_unary(f"/{SERVICE}/Echo")

        def slow_call():
            result["reply"] = echo(b"sleep1.0", timeout=30)

        caller = threading.Thread(target=slow_call)
        caller.start()
        assert started.wait(10)
        hooks: list[str] = []
        stopper = threading.Thread(
            target=server.shutdown, args=(5.0,), kwargs={"before_stop": [lambda: hooks.append("drained")]}
        )
        stopper.start()
        assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING
        caller.join(20)
        stopper.join(20)
        assert result["reply"] == b"sleep1.0"  # the running call finished inside the grace period
        assert hooks == ["drained"]
        with pytest.raises(grpc.RpcError) as info:  # and new calls are refused
            echo(b"late", timeout=2)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE


def test_listening_on_a_busy_port_fails_instead_of_sharing_it():
    first = _server(Settings(listen="127.0.0.1:0"))
    try:
        with pytest.raises(OSError, match="cannot listen"):
            _server(Settings(listen=first.address))
    finally:
        first.shutdown(0)


# ------------------------------------------------------------------------------------------------------ TLS


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _make_pki(directory: Path, name: str = "ca") -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1/localhost and a client certificate, all signed by the CA."""
    directory.mkdir(parents=True, exist_ok=True)
    _openssl(
        *f"req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN={name} -keyout {name}.key".split(),
        *f"-out {name}.pem".split(),
        cwd=directory,
    )
    (directory / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for who in ("server", "client"):
        _openssl(
            *f"req -newkey rsa:2048 -nodes -subj /CN={who} -keyout {who}.key -out {who}.csr".split(),
            cwd=directory,
        )
        sign = f"x509 -req -in {who}.csr -CA {name}.pem -CAkey {name}.key -CAcreateserial -days 2"
        _openssl(*sign.split(), "-extfile", "san.ext", "-out", f"{who}.pem", cwd=directory)
    files = {"ca": f"{name}.pem", "cert": "server.pem", "key": "server.key"}
    files.update(client_cert="client.pem", client_key="client.key")
    return {key: directory / file for key, file in files.items()}


def _check(address: str, credentials) -> int | None:
    return procs.health_status(address, "", timeout=5, credentials=credentials)


def test_tls_and_mtls_with_certificate_reload(tmp_path):
    pki = _make_pki(tmp_path / "pki")
    server_files = tmp_path / "server"
    server_files.mkdir()
    for key in ("cert", "key", "ca"):
        (server_files / pki[key].name).write_bytes(pki[key].read_bytes())
    cert, key, ca = (server_files / pki[k].name for k in ("cert", "key", "ca"))

    settings = Settings(listen="127.0.0.1:0", tls_cert=cert, tls_key=key, tls_client_ca=ca)
    server = _server(settings)
    try:
        root = pki["ca"].read_bytes()
        client = (pki["client_key"].read_bytes(), pki["client_cert"].read_bytes())
        assert _check(server.address, grpc.ssl_channel_credentials(root, *client)) == 1
        assert _check(server.address, grpc.ssl_channel_credentials(root)) is None  # no client certificate
        assert procs.health_status(server.address, "", timeout=5) is None  # plaintext

        # rotate: a new CA and new certificates written over the served files
        fresh = _make_pki(tmp_path / "pki2", name="ca2")
        for k in ("cert", "key", "ca"):
            (server_files / pki[k].name).write_bytes(fresh[k].read_bytes())
        new_client = (fresh["client_key"].read_bytes(), fresh["client_cert"].read_bytes())
        new_root = fresh["ca"].read_bytes()
        procs.wait_for(
            lambda: _check(server.address, grpc.ssl_channel_credentials(new_root, *new_client)) == 1,
            timeout=20,
            interval=0.5,
            what="the rotated certificates to be served",
        )
        assert _check(server.address, grpc.ssl_channel_credentials(root, *client)) is None
    finally:
        server.shutdown(0)


def test_tls_settings_must_be_complete(tmp_path):
    with pytest.raises(ValueError, match="together"):
        server_credentials(tmp_path / "cert.pem", None)
    with pytest.raises(ValueError, match="mTLS"):
        server_credentials(None, None, tmp_path / "ca.pem")
    with pytest.raises(ValueError, match="cannot be read"):
        server_credentials(tmp_path / "cert.pem", tmp_path / "key.pem")
