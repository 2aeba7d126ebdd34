"""A SIGINT/SIGTERM during start-up ends ``cuvis-worker`` and ``cuvis-gateway`` promptly and cleanly.

Real processes on 127.0.0.1 with free ports. Each test lands the signal in one start-up phase by
waiting for a real sign of that phase (a log line, a connection reaching a Redis stand-in, the worker's
record appearing in a real Redis), then checks what a user would notice: the process exits with
128 + the signal number and a one-line reason, nothing of its process group is left, its port binds
again, and Redis holds no worker record or routes for it.

The last test covers the test helpers themselves: a server started through them dies with the process
that started it, even when that process is SIGKILLed.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from helpers import procs

from cuvis_cluster.routing import redis_schema as rs

SIGNALS = [pytest.param(signal.SIGINT, id="SIGINT"), pytest.param(signal.SIGTERM, id="SIGTERM")]
EXIT_BOUND = 30.0  # generous: the assertion is that it exits, not how fast


# --------------------------------------------------------------------------------------------------
# Redis stand-ins


class _Listener:
    """A loopback TCP listener whose accept loop hands each connection to :meth:`_accepted`; closing it
    ends the loop within a bounded time and closes every socket it kept."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self._closed = threading.Event()
        self._socks: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _accept(self) -> None:
        self.sock.settimeout(0.1)  # so that close() ends this loop within a bounded time
        while not self._closed.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self._socks.append(conn)
            self._accepted(conn)

    def _accepted(self, conn: socket.socket) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self._closed.set()
        self._thread.join(timeout=5)
        self.sock.close()
        for sock in self._socks:
            sock.close()


class SilentRedis(_Listener):
    """A TCP listener that accepts connections and never answers: a Redis that hangs."""

    def __init__(self) -> None:
        self.accepted = threading.Event()
        super().__init__()

    def _accepted(self, conn: socket.socket) -> None:
        self.accepted.set()


class HoldingProxy(_Listener):
    """A TCP proxy to a real Redis that withholds every reply after the first script call it sees.

    The worker's first heartbeat is an EVALSHA: Redis executes it (the record is written), but the
    worker never sees the answer, so it stays inside its registration step. Only that one connection
    is held; later connections (such as a deregistration on a fresh connection) pass untouched.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.held = threading.Event()
        self._holding_one = threading.Event()
        super().__init__()

    def _accepted(self, client: socket.socket) -> None:
        client.settimeout(None)
        upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
        self._socks.append(upstream)
        threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()

    def _pump(self, client: socket.socket, upstream: socket.socket) -> None:
        holding = False
        with contextlib.suppress(OSError):
            while not self._closed.is_set():
                ready, _, _ = select.select([client, upstream], [], [], 0.2)
                for sock in ready:
                    data = sock.recv(65536)
                    if not data:
                        return
                    if sock is client:
                        if b"EVALSHA" in data.upper() and not self._holding_one.is_set():
                            self._holding_one.set()
                            holding = True
                        upstream.sendall(data)
                    elif holding:
                        self.held.set()  # the script ran in Redis; its reply goes nowhere
                    else:
                        client.sendall(data)


@pytest.fixture
def silent_redis() -> Iterator[SilentRedis]:
    stand_in = SilentRedis()
    try:
        yield stand_in
    finally:
        stand_in.close()


@pytest.fixture
def real_redis(tmp_path: Path) -> Iterator[procs.ServerProcess]:
    server = procs.start_redis(tmp_path)
    try:
        yield server
    finally:
        server.stop()


# --------------------------------------------------------------------------------------------------
# helpers


def spawn(tmp_path: Path, program: str, *args: str) -> tuple[procs.ServerProcess, int]:
    """Start ``program`` on a free port without waiting for it; (process, port)."""
    port = procs.free_port()
    argv = [str(procs.VENV_BIN / program), "--listen", f"127.0.0.1:{port}", *args]
    if program == "cuvis-worker":
        argv += ["--output-dir", str(tmp_path / "outputs")]
    server = procs.start_server(
        argv, name=program, log_dir=tmp_path, address=f"127.0.0.1:{port}", cwd=tmp_path, wait=False
    )
    return server, port


def group_gone(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False


def process_gone(pid: int) -> bool:
    """No such process, or only its zombie (waiting for whoever adopted it to reap it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def assert_stopped_cleanly(server: procs.ServerProcess, port: int, sig: int, program: str) -> None:
    """Exit status 128 + sig, one-line reason, no process of its group left, port free again."""
    try:
        code = server.proc.wait(timeout=EXIT_BOUND)
    except subprocess.TimeoutExpired:
        raise AssertionError(
            f"{program} still running {EXIT_BOUND:.0f}s after {sig!r}:\n{server.log()}"
        ) from None
    finally:
        server.stop()
    name = signal.Signals(sig).name
    assert code == 128 + sig, server.log()
    reason = f"{program}: {name} during start-up; stopped before serving"
    assert [line for line in server.log().splitlines() if line == reason], server.log()
    procs.wait_for(lambda: group_gone(server.pid), timeout=10, what=f"{program}'s process group to end")
    procs.wait_for(lambda: procs.port_listenable(port), timeout=10, what=f"port {port} to bind again")


def wait_log(server: procs.ServerProcess, text: str, timeout: float = procs.START_TIMEOUT) -> None:
    def seen() -> bool:
        if not server.alive():
            raise AssertionError(f"{server.name} exited early:\n{server.log()}")
        return text in server.log()

    procs.wait_for(seen, timeout=timeout, interval=0.01, what=f"{text!r} in the log")


def wait_event(server: procs.ServerProcess, event: threading.Event, what: str) -> None:
    def happened() -> bool:
        if not server.alive():
            raise AssertionError(f"{server.name} exited early:\n{server.log()}")
        return event.is_set()

    procs.wait_for(happened, timeout=procs.START_TIMEOUT, interval=0.01, what=what)


# --------------------------------------------------------------------------------------------------
# cuvis-worker


@pytest.mark.parametrize("sig", SIGNALS)
def test_worker_signalled_while_loading_the_engine(tmp_path: Path, sig: int) -> None:
    worker, port = spawn(tmp_path, "cuvis-worker")
    wait_log(worker, "loading the engine")  # the torch import and the engine build follow
    worker.proc.send_signal(sig)
    assert_stopped_cleanly(worker, port, sig, "cuvis-worker")
    assert "engine ready" not in worker.log()


@pytest.mark.parametrize("sig", SIGNALS)
def test_worker_signalled_while_redis_does_not_answer(
    tmp_path: Path, silent_redis: SilentRedis, sig: int
) -> None:
    worker, port = spawn(tmp_path, "cuvis-worker", "--redis-url", silent_redis.url)
    wait_log(worker, "registering worker instance")
    wait_event(worker, silent_redis.accepted, "its first heartbeat to connect")
    worker.proc.send_signal(sig)
    assert_stopped_cleanly(worker, port, sig, "cuvis-worker")
    assert "cuvis-worker ready" not in worker.log()


@pytest.mark.parametrize("sig", SIGNALS)
def test_worker_signalled_after_its_record_reached_redis_deregisters(
    tmp_path: Path, real_redis: procs.ServerProcess, sig: int
) -> None:
    host, port_text = real_redis.address.split(":")
    client = redis.Redis(host=host, port=int(port_text), socket_timeout=5)
    # Loaded beforehand, so that the worker's first EVALSHA runs (no NOSCRIPT round trip first).
    client.script_load(rs.HEARTBEAT)
    proxy = HoldingProxy(int(port_text))
    try:
        worker, port = spawn(tmp_path, "cuvis-worker", "--redis-url", proxy.url)
        wait_event(worker, proxy.held, "its first heartbeat to run in Redis")
        members = [rs.text(m) for m in client.zrange(f"{rs.PREFIX}workers", 0, -1)]
        assert len(members) == 1, members  # registered in Redis, still inside its start-up
        instance = members[0]
        worker.proc.send_signal(sig)
        assert_stopped_cleanly(worker, port, sig, "cuvis-worker")
        assert "cuvis-worker ready" not in worker.log()
        assert client.zrange(f"{rs.PREFIX}workers", 0, -1) == []
        assert not client.exists(f"{rs.PREFIX}worker:{instance}", f"{rs.PREFIX}worker:{instance}:sessions")
        routes = [rs.decode_hash(client.hgetall(key)) for key in client.scan_iter(f"{rs.PREFIX}route:*")]
        assert [r for r in routes if r.get("instance") == instance] == []
        tombstone = rs.decode_hash(client.hgetall(rs.lost_key(instance)))
        assert "shut down during start-up" in tombstone.get("reason", ""), tombstone
    finally:
        proxy.close()
        client.close()


# --------------------------------------------------------------------------------------------------
# cuvis-gateway


@pytest.mark.parametrize("sig", SIGNALS)
def test_gateway_signalled_while_waiting_for_redis(
    tmp_path: Path, silent_redis: SilentRedis, sig: int
) -> None:
    gateway, port = spawn(tmp_path, "cuvis-gateway", "--redis-url", silent_redis.url)
    wait_event(gateway, silent_redis.accepted, "its first registry poll to connect")
    gateway.proc.send_signal(sig)
    assert_stopped_cleanly(gateway, port, sig, "cuvis-gateway")
    assert "cuvis-gateway ready" not in gateway.log()


# --------------------------------------------------------------------------------------------------
# right after spawn: the signal may land before main() runs; the process still ends, port free


@pytest.mark.parametrize("program", ["cuvis-worker", "cuvis-gateway"])
@pytest.mark.parametrize("sig", SIGNALS)
def test_signal_right_after_spawn(tmp_path: Path, silent_redis: SilentRedis, program: str, sig: int) -> None:
    server, port = spawn(tmp_path, program, "--redis-url", silent_redis.url)
    server.proc.send_signal(sig)
    try:
        code = server.proc.wait(timeout=EXIT_BOUND)
    finally:
        server.stop()
    # Before main() installs its handler: killed by SIGTERM (-15) or a KeyboardInterrupt (1); after:
    # 128 + sig. Never 0 (that would mean it went on to serve and drained).
    assert code != 0, server.log()
    procs.wait_for(lambda: group_gone(server.pid), timeout=10, what=f"{program}'s process group to end")
    procs.wait_for(lambda: procs.port_listenable(port), timeout=10, what=f"port {port} to bind again")


# --------------------------------------------------------------------------------------------------
# the helpers: a SIGKILLed test process leaves no server behind


def test_server_started_by_the_helpers_dies_with_its_parent(tmp_path: Path) -> None:
    pid_file = tmp_path / "child.pid"
    script = textwrap.dedent(
        f"""
        import sys, time
        sys.path.insert(0, {str(Path(__file__).resolve().parent)!r})
        from pathlib import Path
        from helpers import procs
        server = procs.start_server(
            [sys.executable, "-c", "import time; time.sleep(600)"],
            name="sleeper", log_dir=Path({str(tmp_path)!r}), address="127.0.0.1:0", wait=False,
        )
        Path({str(pid_file)!r}).write_text(str(server.pid))
        time.sleep(600)
        """
    )
    parent = subprocess.Popen([sys.executable, "-c", script], start_new_session=True)
    child = 0
    try:
        procs.wait_for(pid_file.exists, timeout=60, what="the helper to start its child")
        child = int(pid_file.read_text())
        os.kill(child, 0)  # running
        parent.kill()
        parent.wait(timeout=EXIT_BOUND)
        procs.wait_for(lambda: process_gone(child), timeout=10, what="the orphaned child to end")
    finally:
        procs.kill_process_group(parent)
        if child:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child, signal.SIGKILL)
