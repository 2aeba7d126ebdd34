"""``cuvis-cluster up`` and the LocalCluster API (with stand-in workers; see test_real_workers.py)."""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from conftest import STANDIN, list_workers
from helpers import procs

from cuvis_cluster.localcluster.supervisor import LocalCluster
from cuvis_cluster.wire.pb import pb, pb_grpc

pytestmark = pytest.mark.integration


def port_open(address: str) -> bool:
    host, port = address.rsplit(":", 1)
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, int(port))) == 0


def test_local_cluster_api(tmp_path):
    with LocalCluster(workers=2, worker_command=[sys.executable, str(STANDIN)], workdir=tmp_path) as cluster:
        stub = pb_grpc.CuvisAIServiceStub(grpc.insecure_channel(cluster.address))
        session = stub.CreateSession(pb.CreateSessionRequest()).session_id
        stub.Inference(pb.InferenceRequest(session_id=session))
        assert len(list_workers(cluster.address)) == 2
        addresses = [cluster.address, *cluster.worker_addresses, cluster.redis.address]
        children = [c.proc for c in [cluster.redis, cluster.gateway, *cluster.worker_procs]]
    assert all(p.poll() is not None for p in children)
    assert not any(port_open(a) for a in addresses)


@contextlib.contextmanager
def cluster_up(tmp_path: Path) -> Iterator[tuple[subprocess.Popen, str, Path]]:
    """``cuvis-cluster up`` with 2 stand-in workers: (process, gateway address, log file), once it is up."""
    port = procs.free_port()
    argv = [
        str(procs.VENV_BIN / "cuvis-cluster"),
        "up",
        "--workers",
        "2",
        "--listen",
        f"127.0.0.1:{port}",
        "--worker-command",
        shlex.join([sys.executable, str(STANDIN)]),
        "--workdir",
        str(tmp_path / "run"),
    ]
    log = tmp_path / "up.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        procs.wait_for(
            lambda: "cuvis-cluster up: gateway on" in log.read_text(), timeout=120, what="cluster up"
        )
        yield proc, f"127.0.0.1:{port}", log
    finally:
        procs.kill_process_group(proc, signal.SIGTERM, timeout=60)  # up stops its own children


def test_cluster_up_command_stops_cleanly_on_sigterm(tmp_path):
    with cluster_up(tmp_path) as (proc, gateway, log):
        assert f"gateway on {gateway}" in log.read_text()
        stub = pb_grpc.CuvisAIServiceStub(grpc.insecure_channel(gateway))
        stub.CreateSession(pb.CreateSessionRequest())
        worker_addresses = [w.address for w in list_workers(gateway)]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 128 + signal.SIGTERM  # stopped by the signal, as asked
        assert "cuvis-cluster: stopped" in log.read_text()
        assert not port_open(gateway)
        assert not any(port_open(a) for a in worker_addresses)


def test_cluster_up_without_redis_says_how_to_install_it(tmp_path):
    env = {**os.environ, "PATH": str(tmp_path)}  # nothing on PATH
    done = subprocess.run(
        [str(procs.VENV_BIN / "cuvis-cluster"), "up", "--workers", "1"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    assert "apt-get install" in done.stderr and "redis-server" in done.stderr


def test_cluster_up_keeps_serving_when_a_worker_dies(tmp_path):
    with cluster_up(tmp_path) as (proc, gateway, log):
        victim = list_workers(gateway)[0].address
        found = subprocess.run(["pgrep", "-f", "--", f"--listen {victim}"], capture_output=True, text=True)
        pids = [int(p) for p in found.stdout.split()]
        assert pids, f"no process listens on {victim}"
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        procs.wait_for(
            lambda: "the other workers keep serving" in log.read_text(), timeout=30, what="loss noticed"
        )
        assert proc.poll() is None, "cuvis-cluster up must outlive one of its workers"

        stub = pb_grpc.CuvisAIServiceStub(grpc.insecure_channel(gateway))

        def create() -> bool:
            try:
                stub.CreateSession(pb.CreateSessionRequest(), timeout=5)
                return True
            except grpc.RpcError:
                return False

        procs.wait_for(create, timeout=30, what="a session on the surviving worker")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 128 + signal.SIGTERM  # stopped by the signal, as asked
