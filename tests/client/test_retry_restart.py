"""Retries against a server process that is killed and restarted while calls are in flight.

An idempotent call in flight when the server dies is retried by grpc (service config) and, waiting for
the channel to reconnect, completes on the restarted server. A Train stream in flight ends UNAVAILABLE and
is never started again on the new server. (tests/examples/test_gateway_restart.py does the same through
a real gateway in front of real workers.)
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import pytest
from helpers.procs import free_port, kill_process_group, start_server

from cuvis_cluster import errors
from cuvis_cluster.client import connect

FAKE = str(Path(__file__).resolve().parent / "fake_server.py")

pytestmark = pytest.mark.integration


def _start(tmp_path: Path, port: int, name: str, *extra: str):
    return start_server(
        [sys.executable, FAKE, str(port), *extra],
        name=name,
        log_dir=tmp_path,
        address=f"127.0.0.1:{port}",
        timeout=60,
    )


def test_idempotent_call_survives_a_restart_mid_call(tmp_path):
    port = free_port()
    first = _start(tmp_path, port, "first", "--slow-seconds", "3")
    second = None
    try:
        with connect(f"127.0.0.1:{port}", timeout=60) as client:
            client.wait_until_ready(10)
            result: dict[str, object] = {}

            def call() -> None:
                try:
                    result["pipelines"] = client.list_pipelines()
                except Exception as exc:  # reported below
                    result["error"] = exc

            thread = threading.Thread(target=call)
            thread.start()
            deadline = time.monotonic() + 20
            while "call ListAvailablePipelines" not in first.log() and time.monotonic() < deadline:
                time.sleep(0.05)
            assert "call ListAvailablePipelines" in first.log()
            kill_process_group(first.proc)  # the call is in flight on the server
            time.sleep(0.5)
            second = _start(tmp_path, port, "second")
            thread.join(60)
            assert "error" not in result, result.get("error")
            assert len(result["pipelines"]) == 2
            assert "call ListAvailablePipelines" in second.log()  # the retry reached the new server
    finally:
        first.stop()
        if second is not None:
            second.stop()


def test_train_in_flight_surfaces_unavailable_and_is_not_rerun(tmp_path):
    port = free_port()
    first = _start(tmp_path, port, "first")
    second = None
    try:
        with connect(f"127.0.0.1:{port}", timeout=30) as client:
            session = client.create_session()
            session.configure_trainrun("rx_statistical", ["steps=100000", "delay=0.05"])
            stream = session.train(progress=False)
            received = 0
            with pytest.raises(errors.Unavailable) as info:
                for _ in stream:
                    received += 1
                    if received == 3:
                        kill_process_group(first.proc)
                        second = _start(tmp_path, port, "second")
            assert info.value.method == "Train"
            assert 3 <= received < 100000
            assert "call Train" not in second.log()  # nothing re-ran the training
            # The session died with its server: the SDK reports it, and a new session works at once.
            with pytest.raises(errors.NotFound):
                session.train_status()
            with client.create_session() as fresh:
                assert fresh.id != session.id
    finally:
        first.stop()
        if second is not None:
            second.stop()
