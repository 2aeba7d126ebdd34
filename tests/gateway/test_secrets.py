"""No credential leaves a process: a planted Redis password and bearer token must appear in no log
line, no status message, no ListWorkers reply, no metrics page and no CLI error.

A real redis-server that requires the planted password, a stand-in worker (the real membership
code), a gateway with the right URL and two with broken ones (a wrong password, nothing listening).
"""

from __future__ import annotations

import logging
import shutil
import string
import subprocess
import uuid

import grpc
import pytest
import redis
from conftest import start_gateway, start_standin
from helpers import procs
from hypothesis import given
from hypothesis import strategies as st

from cuvis_cluster.common.telemetry import RedactingFilter, redact, register_secret
from cuvis_cluster.wire.pb import control_pb2, control_pb2_grpc, pb, pb_grpc

pytestmark = pytest.mark.integration


def test_redact_masks_url_passwords_bearer_tokens_and_registered_secrets():
    register_secret("cluster-credential-0123")
    text = (
        "redis://:pw1@h:6379/0 rediss://user:pw%402@h/0 redis://h/0?password=pw3&db=1 "
        "authorization: Bearer pw4.token== ; token cluster-credential-0123 end"
    )
    out = redact(text)
    for secret in ("pw1", "pw%402", "pw3", "pw4.token", "cluster-credential-0123"):
        assert secret not in out
    assert "redis://:***@h:6379/0" in out and "rediss://user:***@h/0" in out
    assert redact("redis://cache:6379/0 at 10.0.0.1:80") == "redis://cache:6379/0 at 10.0.0.1:80"


@given(
    user=st.text(alphabet=string.ascii_letters + string.digits + "-_.", max_size=8),
    # "@" included: urllib and redis-py split the authority at its last "@", so may a password hold one.
    password=st.text(alphabet=string.ascii_letters + string.digits + "-_.~!$&'()*+,;=%:@", min_size=1),
    scheme=st.sampled_from(["redis", "rediss", "unix", "https"]),
)
def test_any_url_password_is_masked(user, password, scheme):
    url = f"{scheme}://{user}:{password}@cache.internal:6379/0"
    assert (
        redact(f"connecting to {url} failed")
        == f"connecting to {scheme}://{user}:***@cache.internal:6379/0 failed"
    )


def test_the_log_filter_redacts_arguments_and_tracebacks():
    record = logging.LogRecord(
        "x", logging.ERROR, __file__, 1, "Redis at %s failed", ("redis://:pw5@h",), None
    )
    try:
        raise RuntimeError("while talking to redis://:pw6@h")
    except RuntimeError:
        import sys

        record.exc_info = sys.exc_info()
    RedactingFilter().filter(record)
    line = logging.Formatter().format(record)
    assert "pw5" not in line and "pw6" not in line and "redis://:***@h" in line


def _start_password_redis(tmp_path, password: str) -> procs.ServerProcess:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not on PATH")
    port = procs.free_port()
    argv = [binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no"]
    argv += ["--requirepass", password, "--dir", str(tmp_path)]
    server = procs.start_server(argv, name="redis", log_dir=tmp_path, address=f"127.0.0.1:{port}", wait=False)
    client = redis.Redis(host="127.0.0.1", port=port, password=password, socket_timeout=1.0)
    procs.wait_for(lambda: _pings(client), timeout=30, interval=0.05, what="redis-server to answer PING")
    client.close()
    return server


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


def _outcome(fn) -> str:
    """The reply as text: a message's fields, or the status code and message of the error."""
    try:
        return str(fn())
    except grpc.RpcError as exc:
        return f"{exc.code()} {exc.details()}"


def _exercise(gateway: procs.ServerProcess, token: str) -> list[str]:
    """Calls that succeed and calls that fail through ``gateway``; every reply, and its metrics page."""
    channel = gateway.channel()
    stub = pb_grpc.CuvisAIServiceStub(channel)
    status = control_pb2_grpc.ClusterStatusServiceStub(channel)
    alice = [("authorization", f"Bearer {token}")]
    bad = [("authorization", f"Bearer {token}x")]
    replies = [
        _outcome(lambda: status.ListWorkers(control_pb2.ListWorkersRequest(), metadata=alice)),
        _outcome(lambda: status.ListWorkers(control_pb2.ListWorkersRequest())),
    ]
    created = _outcome(lambda: stub.CreateSession(pb.CreateSessionRequest(), metadata=alice, timeout=10))
    session = created.partition('"')[2].rpartition('"')[0]
    replies += [
        created,
        _outcome(lambda: stub.Inference(pb.InferenceRequest(session_id=session), metadata=alice)),
        _outcome(lambda: stub.Inference(pb.InferenceRequest(session_id="nope"), metadata=alice)),
        _outcome(lambda: stub.CreateSession(pb.CreateSessionRequest(), metadata=bad)),
        gateway.metrics_text(),
    ]
    return replies


def test_a_planted_password_never_leaves(tmp_path):
    password = f"planted-{uuid.uuid4().hex}"
    wrong = f"wrongpw-{uuid.uuid4().hex}"
    token = f"tok-{uuid.uuid4().hex}"
    tokens = tmp_path / "tokens"
    tokens.write_text(f"{token} alice\n")
    redis_server = _start_password_redis(tmp_path, password)
    good = f"redis://:{password}@{redis_server.address}/0"
    servers = [redis_server]
    replies: list[str] = []
    try:
        worker = start_standin(tmp_path, good, "worker")
        servers.append(worker)
        auth = ("--auth-token-file", str(tokens), "--log-level", "DEBUG")
        gateway = start_gateway(tmp_path, good, "gw", *auth)
        servers.append(gateway)
        broken = [
            start_gateway(
                tmp_path, f"redis://:{wrong}@{redis_server.address}/0", "gwWrong", *auth, wait=False
            ),
            start_gateway(
                tmp_path, f"redis://:{password}@127.0.0.1:{procs.free_port()}/0", "gwGone", *auth, wait=False
            ),
        ]
        servers += broken
        for gw in [gateway, *broken]:
            procs.wait_for(
                lambda gw=gw: procs.health_status(gw.address) is not None, timeout=60, what="health"
            )
            replies += _exercise(gw, token)
        replies.append(worker.metrics_text())
        # The failures were real, and their messages name the store without its password.
        assert any("UNAVAILABLE" in r and "redis://:***@" in r for r in replies), replies
        assert any("session_id" in r for r in replies), replies
        # A CLI error that echoes settings.
        cli = subprocess.run(
            [str(procs.VENV_BIN / "cuvis-gateway"), "--redis-url", good, "--listen", "nonsense"],
            capture_output=True,
            text=True,
            timeout=60,
            env=procs.clean_env(),
        )
        assert cli.returncode != 0
        replies.append(cli.stdout + cli.stderr)
    finally:
        for server in reversed(servers):
            server.terminate(timeout=15)  # graceful, so that shutdown logging runs too
            server.stop()
    logs = {path.name: path.read_text(errors="replace") for path in tmp_path.glob("*.log")}
    assert {"gw.log", "gwWrong.log", "gwGone.log", "worker.log"} <= set(logs)
    for secret in (password, wrong, token):
        assert [name for name, text in logs.items() if secret in text] == [], secret
        assert [r for r in replies if secret in r] == [], secret
