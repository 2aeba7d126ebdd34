"""Ports handed to local clusters, benchmarks and tests: free, distinct, and never ephemeral."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import pytest
from helpers.procs import VENV_BIN, clean_env

from cuvis_cluster.common import ports


def test_ports_are_free_distinct_and_below_the_ephemeral_range() -> None:
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    given = [ports.free_port() for _ in range(50)]
    assert len(set(given)) == len(given)
    assert all(ports._LOWEST <= port < low for port in given)
    for port in given[:10]:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))  # still free: nothing else took it


def test_a_port_that_is_held_is_never_given_out(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        taken = held.getsockname()[1]
        held.listen()
        # Force every random pick onto the held port first, then onto a free one.
        picks = iter([taken, taken, taken])
        real = ports.random.randrange
        monkeypatch.setattr(ports.random, "randrange", lambda a, b: next(picks, None) or real(a, b))
        monkeypatch.setattr(ports, "_ephemeral_low", lambda: 65000)
        assert ports.free_port() != taken


@pytest.mark.integration
@pytest.mark.parametrize("program", ["cuvis-gateway", "cuvis-worker"])
def test_a_busy_metrics_port_is_a_one_line_error(tmp_path: Path, program: str) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        argv = [
            str(VENV_BIN / program),
            "--listen",
            f"127.0.0.1:{ports.free_port()}",
            "--metrics-port",
            str(port),
        ]
        if program == "cuvis-worker":
            argv += ["--output-dir", str(tmp_path)]
        else:
            argv += ["--redis-url", "redis://127.0.0.1:1/0"]
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=120, env=clean_env(), cwd=tmp_path
        )
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    assert f"cannot serve metrics on 127.0.0.1:{port}" in done.stderr
