"""The container health check (image HEALTHCHECK and the chart's exec probes) against a real gRPC
server with grpc.health.v1: plaintext, TLS and mTLS, ready and alive modes."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from _deploy_support import missing_tool
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from cuvis_cluster.common.ports import free_port
from cuvis_cluster.deploy import healthcheck

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class Server:
    def __init__(self, credentials=None, with_health=True):
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        self.health = health.HealthServicer()
        if with_health:
            health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        if credentials is None:
            self.port = self.server.add_insecure_port("127.0.0.1:0")
        else:
            self.port = self.server.add_secure_port("127.0.0.1:0", credentials)
        self.server.start()

    def set(self, status):
        self.health.set("", status)

    def stop(self):
        self.server.stop(grace=None).wait(5)


@pytest.fixture
def server():
    s = Server()
    yield s
    s.stop()


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for name in ("CUVIS_LISTEN", "CUVIS_TLS_CERT", "CUVIS_TLS_KEY", "CUVIS_TLS_CLIENT_CA"):
        monkeypatch.delenv(name, raising=False)


def check(*argv):
    return healthcheck.main(["--timeout", "3", *argv])


def test_ready_follows_the_serving_status(server, monkeypatch):
    monkeypatch.setenv("CUVIS_LISTEN", f"0.0.0.0:{server.port}")  # wildcard -> 127.0.0.1
    server.set(SERVING)
    assert check() == 0
    server.set(NOT_SERVING)
    assert check() == 1, "a draining worker or a gateway without Redis is not ready"
    assert check("--mode", "alive") == 0, "but it is alive: no restart"


def test_alive_when_the_server_answers_without_health(monkeypatch):
    bare = Server(with_health=False)
    try:
        assert check("--address", f"127.0.0.1:{bare.port}", "--mode", "alive") == 0
        assert check("--address", f"127.0.0.1:{bare.port}") == 1
    finally:
        bare.stop()


def test_dead_server_fails_both_modes(server):
    address = f"127.0.0.1:{server.port}"
    server.stop()
    assert check("--address", address, "--timeout", "1") == 1
    assert check("--address", address, "--timeout", "1", "--mode", "alive") == 1


def test_local_target():
    assert healthcheck.local_target("0.0.0.0:50051") == "127.0.0.1:50051"
    assert healthcheck.local_target("[::]:50051") == "127.0.0.1:50051"
    assert healthcheck.local_target("10.0.0.7:50051") == "10.0.0.7:50051"


# ---------------------------------------------------------------------------------------- TLS


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """A CA and a server certificate for cuvis-worker.ai.svc, usable for client auth too."""
    openssl = shutil.which("openssl")
    if openssl is None:
        missing_tool("openssl")
    d = tmp_path_factory.mktemp("pki")

    def sh(*args):
        subprocess.run([openssl, *args], cwd=d, check=True, capture_output=True, timeout=60)

    sh(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "2",
        "-subj",
        "/CN=test-ca",
    )
    for name in ("server", "stranger"):
        sh(
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            f"{name}.key",
            "-out",
            f"{name}.csr",
            "-subj",
            f"/CN={name}",
        )
    (d / "ext").write_text("subjectAltName=DNS:cuvis-worker.ai.svc\nextendedKeyUsage=serverAuth,clientAuth\n")
    sh(
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.crt",
        "-days",
        "2",
        "-extfile",
        "ext",
    )
    # A self-signed client nobody trusts.
    sh(
        "x509",
        "-req",
        "-in",
        "stranger.csr",
        "-signkey",
        "stranger.key",
        "-out",
        "stranger.crt",
        "-days",
        "2",
    )
    return d


def _tls_server(pki: Path, mutual: bool) -> Server:
    credentials = grpc.ssl_server_credentials(
        [((pki / "server.key").read_bytes(), (pki / "server.crt").read_bytes())],
        root_certificates=(pki / "ca.crt").read_bytes() if mutual else None,
        require_client_auth=mutual,
    )
    s = Server(credentials)
    s.set(SERVING)
    return s


def test_certificate_names(pki):
    assert healthcheck.certificate_names(pki / "server.crt") == ["cuvis-worker.ai.svc", "server"]


def test_tls_trusts_the_servers_own_certificate(pki, monkeypatch):
    s = _tls_server(pki, mutual=False)
    try:
        monkeypatch.setenv("CUVIS_LISTEN", f"0.0.0.0:{s.port}")
        monkeypatch.setenv("CUVIS_TLS_CERT", str(pki / "server.crt"))
        monkeypatch.setenv("CUVIS_TLS_KEY", str(pki / "server.key"))
        assert check() == 0
        assert check("--no-tls", "--timeout", "1") == 1, "plaintext against a TLS port fails"
    finally:
        s.stop()


def test_mtls_presents_the_pods_certificate(pki, monkeypatch):
    s = _tls_server(pki, mutual=True)
    try:
        monkeypatch.setenv("CUVIS_LISTEN", f"0.0.0.0:{s.port}")
        monkeypatch.setenv("CUVIS_TLS_CERT", str(pki / "server.crt"))
        monkeypatch.setenv("CUVIS_TLS_KEY", str(pki / "server.key"))
        monkeypatch.setenv("CUVIS_TLS_CLIENT_CA", str(pki / "ca.crt"))
        assert check() == 0
        assert check("--mode", "alive") == 0
        untrusted = [
            "--cert",
            str(pki / "stranger.crt"),
            "--key",
            str(pki / "stranger.key"),
            "--timeout",
            "1",
        ]
        assert check(*untrusted) == 1, "a client certificate outside the client CA is refused"
        monkeypatch.delenv("CUVIS_TLS_CLIENT_CA")
        assert check("--timeout", "1") == 1, "without a client certificate the handshake fails"
    finally:
        s.stop()


def test_the_probe_command_line(server, monkeypatch):
    """Exactly what the chart and the Dockerfiles run."""
    server.set(SERVING)
    env = {"CUVIS_LISTEN": f"0.0.0.0:{server.port}", "PATH": "/usr/bin:/bin"}
    cmd = [sys.executable, "-m", "cuvis_cluster.deploy.healthcheck", "--mode", "ready", "--timeout", "4"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip() == "healthy: SERVING"


# ---------------------------------------------------------------------------------------- real binary


def _free_port() -> int:
    return free_port()


@pytest.mark.integration
def test_gateway_without_redis_is_alive_but_not_ready(tmp_path):
    """What the chart's probes rely on: during a Redis outage the real gateway stays alive (no restart)
    and leaves the Service (not ready)."""
    gateway = Path(sys.executable).parent / "cuvis-gateway"
    if not gateway.exists():
        pytest.skip("cuvis-gateway is not installed (pip install -e .)")
    port, dead_redis = _free_port(), _free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("CUVIS_")},
        "CUVIS_LISTEN": f"127.0.0.1:{port}",
        "CUVIS_REDIS_URL": f"redis://127.0.0.1:{dead_redis}/0",
    }
    log = (tmp_path / "gateway.log").open("w")
    proc = subprocess.Popen(
        [str(gateway)], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 30
        while check("--address", f"127.0.0.1:{port}", "--mode", "alive", "--timeout", "1") != 0:
            assert proc.poll() is None, (tmp_path / "gateway.log").read_text()
            assert time.monotonic() < deadline, "gateway did not come up"
            time.sleep(0.2)
        assert check("--address", f"127.0.0.1:{port}", "--mode", "ready") == 1
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
        log.close()
