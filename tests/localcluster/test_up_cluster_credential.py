"""``cuvis-cluster up`` secures its workers: a fresh cluster credential, sent by its gateway, required by its
workers. A client that calls a worker's port directly is UNAUTHENTICATED; through the gateway it works."""

from __future__ import annotations

import re
import signal
import stat
import subprocess
from pathlib import Path

import grpc
import pytest
from helpers import procs

from cuvis_cluster.routing.metadata import CLUSTER_TOKEN_METADATA
from cuvis_cluster.wire.pb import control_pb2, control_pb2_grpc, pb, pb_grpc

pytestmark = pytest.mark.integration

UP_TIMEOUT = 240.0  # two cold torch imports on a busy 2-core machine


def test_up_gives_its_workers_a_credential_that_only_its_gateway_sends(tmp_path):
    workdir = tmp_path / "run"
    out = tmp_path / "up.out"
    argv = [
        str(procs.VENV_BIN / "cuvis-cluster"),
        "up",
        "--workers",
        "1",
        "--listen",
        f"127.0.0.1:{procs.free_port()}",
        "--workdir",
        str(workdir),
        "--worker-arg=--device=cpu",
        "--grace-seconds",
        "2",
    ]
    with open(out, "wb") as sink:
        up = subprocess.Popen(
            argv,
            stdout=sink,
            stderr=subprocess.STDOUT,
            env=procs.clean_env(),
            cwd=tmp_path,
            start_new_session=True,
        )
    try:
        text = procs.wait_for(
            lambda: _ready_output(out, up), timeout=UP_TIMEOUT, interval=0.5, what="cuvis-cluster up ready"
        )
        gateway = re.search(r"gateway on (\S+)", text).group(1)
        worker = re.search(r"workers: (\S+)", text).group(1)
        token_file = workdir / "cluster-token"
        assert f"cluster credential: {token_file}" in text
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        token = token_file.read_text().strip()
        assert len(token) >= 32 and token not in text

        with grpc.insecure_channel(worker) as channel:
            direct = pb_grpc.CuvisAIServiceStub(channel)
            with pytest.raises(grpc.RpcError) as caught:
                direct.CreateSession(pb.CreateSessionRequest(), timeout=30)
            assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
            control = control_pb2_grpc.WorkerControlServiceStub(channel)
            with pytest.raises(grpc.RpcError) as caught:
                control.Drain(control_pb2.DrainRequest(grace_seconds=1), timeout=30)
            assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
            # The operator, who can read the run directory, can still reach the control service.
            status = control.GetWorkerStatus(
                control_pb2.GetWorkerStatusRequest(), metadata=((CLUSTER_TOKEN_METADATA, token),), timeout=30
            )
            assert status.status.address == worker

        with grpc.insecure_channel(gateway) as channel:
            stub = pb_grpc.CuvisAIServiceStub(channel)
            session = stub.CreateSession(pb.CreateSessionRequest(), timeout=30).session_id
            stub.CloseSession(pb.CloseSessionRequest(session_id=session), timeout=30)
    finally:
        if up.poll() is None:
            up.send_signal(signal.SIGINT)
            try:
                up.wait(timeout=60)
            except subprocess.TimeoutExpired:
                procs.kill_process_group(up)
    logs = "".join(p.read_text(errors="replace") for p in workdir.glob("*.log"))
    assert token not in logs and token not in out.read_text(errors="replace")


def _ready_output(out: Path, up: subprocess.Popen) -> str | None:
    text = out.read_text(errors="replace") if out.exists() else ""
    if up.poll() is not None:
        raise AssertionError(f"cuvis-cluster up exited with {up.returncode}:\n{text[-3000:]}")
    return text if "Press Ctrl-C to stop." in text else None
