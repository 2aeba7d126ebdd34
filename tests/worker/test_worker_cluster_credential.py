"""Workers trust only the cluster: real ``cuvis-worker`` processes with a cluster credential file.

A worker started with ``--cluster-token-file`` refuses calls without the credential (UNAUTHENTICATED),
control RPCs included, serves them with it, keeps health and reflection open, and works behind a
gateway that has the same file. A ``--standalone`` worker serves clients without it, as anonymous,
but still refuses its control RPCs.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import redis
from gateway.conftest import start_gateway
from grpc_health.v1 import health_pb2, health_pb2_grpc
from helpers import procs

from cuvis_cluster.routing import redis_schema as rs
from cuvis_cluster.routing.metadata import CLUSTER_TOKEN_METADATA, OWNER_METADATA
from cuvis_cluster.wire.pb import control_pb2, control_pb2_grpc, pb, pb_grpc

pytestmark = pytest.mark.integration


@dataclass
class Worker:
    server: procs.ServerProcess
    token: str
    token_file: Path
    redis_url: str

    def stub(self) -> pb_grpc.CuvisAIServiceStub:
        return pb_grpc.CuvisAIServiceStub(self.server.channel())

    def control(self) -> control_pb2_grpc.WorkerControlServiceStub:
        return control_pb2_grpc.WorkerControlServiceStub(self.server.channel())

    def owner_of(self, session: str) -> str:
        store = redis.Redis.from_url(self.redis_url)
        try:
            return rs.text(store.hget(rs.route_key(session), "owner") or b"")
        finally:
            store.close()


def with_token(token: str, *extra: tuple[str, str]) -> tuple[tuple[str, str], ...]:
    return ((CLUSTER_TOKEN_METADATA, token), *extra)


def refused(call, *args, **kwargs) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call(*args, timeout=30, **kwargs)
    return caught.value


def write_token_file(path: Path, *tokens: str) -> Path:
    path.write_text("".join(t + "\n" for t in tokens))
    path.chmod(0o600)
    return path


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory) -> Iterator[procs.ServerProcess]:
    server = procs.start_redis(tmp_path_factory.mktemp("redis"))
    try:
        yield server
    finally:
        server.stop()


def _start(
    workdir: Path, redis_server: procs.ServerProcess, *flags: str, name: str, db: int
) -> Iterator[Worker]:
    token = secrets.token_urlsafe(32)
    token_file = write_token_file(workdir / "cluster-token", token)
    url = f"redis://{redis_server.address}/{db}"  # a database of its own: no gateway sees the others
    server = procs.start_worker(
        workdir,
        "--device",
        "cpu",
        "--redis-url",
        url,
        "--cluster-token-file",
        str(token_file),
        *flags,
        name=name,
    )
    try:
        yield Worker(server, token, token_file, url)
    finally:
        server.stop()


@pytest.fixture(scope="module")
def secured(tmp_path_factory, redis_server) -> Iterator[Worker]:
    """A cluster worker: only calls with the credential are served."""
    yield from _start(tmp_path_factory.mktemp("secured"), redis_server, name="secured", db=0)


@pytest.fixture(scope="module")
def standalone(tmp_path_factory, redis_server) -> Iterator[Worker]:
    """A standalone worker that also has a credential (for its control RPCs)."""
    yield from _start(
        tmp_path_factory.mktemp("standalone"), redis_server, "--standalone", name="standalone", db=1
    )


# ------------------------------------------------------------------------------------------ secured


def test_direct_calls_without_the_credential_are_unauthenticated(secured):
    stub, control = secured.stub(), secured.control()
    calls = [
        (stub.CreateSession, pb.CreateSessionRequest()),
        (stub.ListAvailablePipelines, pb.ListAvailablePipelinesRequest()),
        (stub.CloseSession, pb.CloseSessionRequest(session_id="someone-elses")),
        (control.GetWorkerStatus, control_pb2.GetWorkerStatusRequest()),
        (control.Drain, control_pb2.DrainRequest(grace_seconds=1)),
    ]
    for call, request in calls:
        error = refused(call, request)
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED, call
        assert "only through the cluster" in error.details()
        assert secured.token not in error.details()
    # A streaming method is refused the same way, before it yields anything.
    error = refused(lambda **kw: list(stub.Train(pb.TrainRequest(session_id="x"), **kw)))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    # The refusals were counted and logged without the credential; the worker still serves.
    assert secured.server.alive()
    assert secured.token not in secured.server.log()


def test_a_wrong_or_empty_credential_is_unauthenticated(secured):
    stub, control = secured.stub(), secured.control()
    for wrong in ("", secured.token[:-1], secured.token + "x", "Bearer " + secured.token):
        error = refused(stub.CreateSession, pb.CreateSessionRequest(), metadata=with_token(wrong))
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "not valid" in error.details()
        error = refused(
            control.GetWorkerStatus, control_pb2.GetWorkerStatusRequest(), metadata=with_token(wrong)
        )
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED


def test_calls_with_the_credential_are_served_and_keep_their_owner(secured):
    stub, control = secured.stub(), secured.control()
    metadata = with_token(secured.token, (OWNER_METADATA, "alice"))
    session = stub.CreateSession(pb.CreateSessionRequest(), metadata=metadata, timeout=30).session_id
    try:
        status = control.GetWorkerStatus(
            control_pb2.GetWorkerStatusRequest(), metadata=with_token(secured.token), timeout=30
        ).status
        assert session in status.session_ids
        assert secured.owner_of(session) == "alice"
    finally:
        stub.CloseSession(pb.CloseSessionRequest(session_id=session), metadata=metadata, timeout=30)


def test_health_and_reflection_stay_open(secured):
    health = health_pb2_grpc.HealthStub(secured.server.channel())
    reply = health.Check(health_pb2.HealthCheckRequest(), timeout=30)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    listed = procs.grpcurl("-plaintext", secured.server.address, "list")
    assert listed.returncode == 0, listed.stderr
    assert "cuvis_ai.v1.CuvisAIService" in listed.stdout.split()


def test_grpcurl_with_the_documented_header_reaches_the_control_service(secured):
    # docs/operations.md drains a worker by hand this way; GetWorkerStatus leaves it running.
    method = "cuvis_cluster.internal.v1.WorkerControlService/GetWorkerStatus"
    header = f"{CLUSTER_TOKEN_METADATA}: {secured.token}"
    done = procs.grpcurl("-plaintext", "-H", header, secured.server.address, method)
    assert done.returncode == 0, done.stderr
    assert secured.server.address in done.stdout
    without = procs.grpcurl("-plaintext", secured.server.address, method)
    assert without.returncode != 0 and "Unauthenticated" in without.stderr


def test_a_gateway_with_the_credential_serves_clients_end_to_end(secured, tmp_path):
    gateway = start_gateway(
        tmp_path, secured.redis_url, "gw", "--cluster-token-file", str(secured.token_file)
    )
    try:
        # The gateway found the worker (its probes pass) and forwards client calls with the credential.
        stub = pb_grpc.CuvisAIServiceStub(gateway.channel())
        session = procs.wait_for(
            lambda: _try_create(stub), timeout=60, what="CreateSession through the gateway"
        )
        pipelines = stub.ListAvailablePipelines(pb.ListAvailablePipelinesRequest(), timeout=30).pipelines
        assert len(pipelines) > 0
        stub.CloseSession(pb.CloseSessionRequest(session_id=session), timeout=30)
        # A client cannot smuggle a credential through the gateway: it is replaced by the gateway's.
        stub.ListAvailablePipelines(
            pb.ListAvailablePipelinesRequest(), metadata=with_token("forged"), timeout=30
        )
    finally:
        gateway.stop()
    assert secured.token not in gateway.log()


def _try_create(stub: pb_grpc.CuvisAIServiceStub) -> str | None:
    try:
        return stub.CreateSession(pb.CreateSessionRequest(), timeout=10).session_id
    except grpc.RpcError as exc:
        if exc.code() == grpc.StatusCode.UNAUTHENTICATED:
            raise
        return None  # UNAVAILABLE until the gateway has read the worker's registration


def test_a_rotated_credential_is_picked_up_without_a_restart(secured):
    control = secured.control()
    new = secrets.token_urlsafe(32)

    def status(token: str) -> grpc.StatusCode:
        try:
            control.GetWorkerStatus(
                control_pb2.GetWorkerStatusRequest(), metadata=with_token(token), timeout=30
            )
            return grpc.StatusCode.OK
        except grpc.RpcError as exc:
            return exc.code()

    assert status(new) == grpc.StatusCode.UNAUTHENTICATED
    try:
        _rotate(secured, status, new)
    finally:  # the later tests use the original credential
        write_token_file(secured.token_file, secured.token)
    procs.wait_for(lambda: status(secured.token) == grpc.StatusCode.OK, timeout=30, what="restored")
    assert new not in secured.server.log() and secured.token not in secured.server.log()


def _rotate(secured: Worker, status, new: str) -> None:
    # Step 1 of a rotation: both accepted, the old one still first (what the gateways send).
    write_token_file(secured.token_file, secured.token, new)
    procs.wait_for(lambda: status(new) == grpc.StatusCode.OK, timeout=30, what="the new credential")
    assert status(secured.token) == grpc.StatusCode.OK
    # Last step: the old one removed.
    write_token_file(secured.token_file, new)
    procs.wait_for(
        lambda: status(secured.token) == grpc.StatusCode.UNAUTHENTICATED,
        timeout=30,
        what="the old one refused",
    )
    assert status(new) == grpc.StatusCode.OK
    # A file emptied by a half-done edit keeps what was loaded: the cluster is not locked out.
    secured.token_file.write_text("")
    # (the worker looks at the file when calls arrive, at most once a second)
    procs.wait_for(
        lambda: status(new) == grpc.StatusCode.OK and "cannot be re-read" in secured.server.log(),
        timeout=30,
        what="the warning",
    )


def test_drain_with_the_credential_is_accepted(secured):
    # Last test on this worker: it drains and exits.
    control = secured.control()
    reply = control.Drain(
        control_pb2.DrainRequest(grace_seconds=1), metadata=with_token(secured.token), timeout=30
    )
    assert reply.accepted
    procs.wait_for(lambda: not secured.server.alive(), timeout=60, what="the drained worker to exit")


# ---------------------------------------------------------------------------------------- standalone


def test_standalone_serves_clients_without_the_credential_as_anonymous(standalone):
    stub = standalone.stub()
    # A client claims an identity; without the credential the claim is ignored.
    session = stub.CreateSession(
        pb.CreateSessionRequest(), metadata=((OWNER_METADATA, "alice"),), timeout=30
    ).session_id
    try:
        assert standalone.owner_of(session) == ""
        assert len(stub.ListAvailablePipelines(pb.ListAvailablePipelinesRequest(), timeout=30).pipelines) > 0
    finally:
        stub.CloseSession(pb.CloseSessionRequest(session_id=session), timeout=30)
    # With the credential (a gateway in front), the owner is trusted.
    metadata = with_token(standalone.token, (OWNER_METADATA, "bob"))
    session = stub.CreateSession(pb.CreateSessionRequest(), metadata=metadata, timeout=30).session_id
    assert standalone.owner_of(session) == "bob"
    # An anonymous caller that knows the id cannot reach bob's session: it does not exist for them.
    for call, request in (
        (stub.CloseSession, pb.CloseSessionRequest(session_id=session)),
        (stub.GetTrainStatus, pb.GetTrainStatusRequest(session_id=session)),
    ):
        assert refused(call, request).code() == grpc.StatusCode.NOT_FOUND
    assert standalone.owner_of(session) == "bob"  # still there
    stub.CloseSession(pb.CloseSessionRequest(session_id=session), metadata=metadata, timeout=30)
    # A credential that is presented must be valid, also here.
    error = refused(stub.CreateSession, pb.CreateSessionRequest(), metadata=with_token("forged"))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED


def test_standalone_control_rpcs_still_need_the_credential(standalone):
    control = standalone.control()
    for call, request in (
        (control.Drain, control_pb2.DrainRequest(grace_seconds=1)),
        (control.GetWorkerStatus, control_pb2.GetWorkerStatusRequest()),
    ):
        error = refused(call, request)
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "WorkerControlService needs the cluster credential" in error.details()
    assert standalone.server.alive()
    status = control.GetWorkerStatus(
        control_pb2.GetWorkerStatusRequest(), metadata=with_token(standalone.token), timeout=30
    )
    assert not status.status.draining


def test_standalone_without_a_credential_cannot_be_drained(tmp_path, redis_server):
    url = f"redis://{redis_server.address}/2"
    server = procs.start_worker(tmp_path, "--device", "cpu", "--redis-url", url, "--standalone", name="open")
    try:
        control = control_pb2_grpc.WorkerControlServiceStub(server.channel())
        for metadata in ((), with_token("anything")):
            error = refused(control.Drain, control_pb2.DrainRequest(grace_seconds=1), metadata=metadata)
            assert error.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "cannot be controlled remotely" in refused(control.Drain, control_pb2.DrainRequest()).details()
        stub = pb_grpc.CuvisAIServiceStub(server.channel())
        session = stub.CreateSession(pb.CreateSessionRequest(), timeout=30).session_id
        stub.CloseSession(pb.CloseSessionRequest(session_id=session), timeout=30)
        assert server.alive()
    finally:
        server.stop()


def test_a_worker_without_a_credential_warns_that_it_trusts_any_caller(worker):
    # The module-wide plain worker of tests/worker: it serves as before, and says why that is unsafe.
    stub = pb_grpc.CuvisAIServiceStub(worker.channel())
    assert len(stub.ListAvailablePipelines(pb.ListAvailablePipelinesRequest(), timeout=30).pipelines) > 0
    assert "trusts any caller" in worker.log() and "--cluster-token-file" in worker.log()


def test_an_unreadable_credential_file_fails_the_start(tmp_path):
    server = procs.start_worker(
        tmp_path, "--cluster-token-file", str(tmp_path / "missing"), wait=False, metrics=False
    )
    try:
        code = server.proc.wait(timeout=120)
    finally:
        server.stop()
    assert code == 2
    assert "cannot start" in server.log() and "missing" in server.log()
