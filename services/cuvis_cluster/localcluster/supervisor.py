"""Supervises a whole cluster on loopback: a real ``redis-server``, N ``cuvis-worker`` processes, one gateway.

Python API (tests, examples)::

    with LocalCluster(workers=2) as cluster:
        channel = grpc.insecure_channel(cluster.address)
        ...

Every child runs in its own process group and logs to ``<workdir>/<name>.log``; :meth:`stop` sends
SIGTERM to each group (gateway first, then workers, then Redis) and SIGKILLs whatever outlives the
grace period. Redis runs without persistence (``--save '' --appendonly no``) in a temporary directory.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

REDIS_INSTALL_HINT = "apt-get install --no-install-recommends redis-server"


class ClusterError(RuntimeError):
    """The local cluster could not be started."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def find_redis_server() -> str:
    binary = shutil.which("redis-server")
    if binary is None:
        raise ClusterError(f"redis-server is not on PATH; install it with: {REDIS_INSTALL_HINT}")
    return binary


def _console_script(name: str) -> list[str]:
    """The venv's entry point next to this interpreter, else whatever is on PATH."""
    candidate = Path(sys.executable).parent / name
    if candidate.exists():
        return [str(candidate)]
    found = shutil.which(name)
    if found:
        return [found]
    module = {"cuvis-worker": "cuvis_cluster.worker.main", "cuvis-gateway": "cuvis_cluster.gateway.main"}[
        name
    ]
    return [sys.executable, "-m", module]


@dataclass
class Child:
    name: str
    argv: list[str]
    log_path: Path
    address: str = ""
    metrics_port: int = 0
    proc: subprocess.Popen | None = None

    def start(self, cwd: Path, env: dict[str, str]) -> None:
        with open(self.log_path, "ab") as log_file:
            self.proc = subprocess.Popen(
                self.argv,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=str(cwd),
                env=env,
                start_new_session=True,
            )

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, sig)

    def wait(self, timeout: float) -> bool:
        if self.proc is None:
            return True
        try:
            self.proc.wait(timeout=timeout)
            return True
        except subprocess.TimeoutExpired:
            return False

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


@dataclass
class LocalCluster:
    """Redis + ``workers`` workers + one gateway on 127.0.0.1.

    ``listen`` is the gateway's HOST:PORT (port 0 picks a free one). ``worker_command`` replaces
    ``cuvis-worker`` (it must accept ``--listen``, ``--redis-url`` and ``--metrics-port``);
    ``worker_args`` / ``gateway_args`` are extra flags for every worker / the gateway.
    """

    workers: int = 2
    listen: str = "127.0.0.1:0"
    worker_command: Sequence[str] | None = None
    worker_args: Sequence[str] = ()
    gateway_args: Sequence[str] = ()
    workdir: Path | None = None
    startup_timeout: float = 180.0
    grace_seconds: float = 10.0
    env: dict[str, str] | None = None
    metrics: bool = True
    redis: Child | None = field(default=None, init=False)
    worker_procs: list[Child] = field(default_factory=list, init=False)
    gateway: Child | None = field(default=None, init=False)
    _tmp: tempfile.TemporaryDirectory | None = field(default=None, init=False, repr=False)

    # -- properties --------------------------------------------------------------------------------
    @property
    def address(self) -> str:
        """HOST:PORT of the gateway: the one address clients use."""
        assert self.gateway is not None, "cluster not started"
        return self.gateway.address

    @property
    def redis_url(self) -> str:
        assert self.redis is not None, "cluster not started"
        return f"redis://{self.redis.address}/0"

    @property
    def home(self) -> Path:
        """The working directory: child logs, Redis data, worker homes, shared outputs."""
        assert self.workdir is not None, "cluster not started"
        return self.workdir

    @property
    def worker_addresses(self) -> list[str]:
        return [w.address for w in self.worker_procs]

    @property
    def gateway_metrics_url(self) -> str:
        assert self.gateway is not None
        return f"http://127.0.0.1:{self.gateway.metrics_port}/metrics"

    # -- lifecycle ---------------------------------------------------------------------------------
    def __enter__(self) -> LocalCluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> LocalCluster:
        redis_binary = find_redis_server()
        if self.workers < 1:
            raise ClusterError("--workers must be at least 1")
        if self.workdir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="cuvis-cluster-")
            self.workdir = Path(self._tmp.name)
        self.workdir.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("CUVIS_")}
        env.setdefault("PYTHONUNBUFFERED", "1")
        env.update(self.env or {})
        try:
            self._start_redis(redis_binary, env)
            for i in range(self.workers):
                self._start_worker(i, env)
            self._start_gateway(env)
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _start_redis(self, binary: str, env: dict[str, str]) -> None:
        port = free_port()
        data = self.home / "redis"
        data.mkdir(exist_ok=True)
        argv = [binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no"]
        argv += ["--dir", str(data), "--protected-mode", "yes"]
        self.redis = Child("redis", argv, self.home / "redis.log", address=f"127.0.0.1:{port}")
        self.redis.start(data, env)
        deadline = time.monotonic() + 20
        while not self._redis_ping():
            if not self.redis.alive():
                raise ClusterError(f"redis-server exited:\n{self.redis.tail()}")
            if time.monotonic() > deadline:
                raise ClusterError(f"redis-server did not answer PING:\n{self.redis.tail()}")
            time.sleep(0.05)

    def _redis_ping(self) -> bool:
        import redis

        client = redis.Redis.from_url(self.redis_url, socket_timeout=0.5, socket_connect_timeout=0.5)
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False
        finally:
            client.close()

    def _start_worker(self, index: int, env: dict[str, str]) -> None:
        port = free_port()
        metrics_port = free_port() if self.metrics else 0
        name = f"worker-{index}"
        home = self.home / name
        home.mkdir(exist_ok=True)
        command = list(self.worker_command) if self.worker_command else _console_script("cuvis-worker")
        argv = [*command, "--listen", f"127.0.0.1:{port}", "--redis-url", self.redis_url]
        if metrics_port:
            argv += ["--metrics-port", str(metrics_port)]
        if not self.worker_command:
            # One output root for every worker, as the chart's shared outputs volume: a pipeline saved
            # through one worker can be loaded by a session that lives on another.
            outputs = self.home / "outputs"
            argv += ["--output-dir", str(outputs), "--grace-seconds", str(self.grace_seconds)]
        argv += list(self.worker_args)
        child = Child(name, argv, self.home / f"{name}.log", f"127.0.0.1:{port}", metrics_port)
        child.start(home, env)
        self.worker_procs.append(child)

    def _start_gateway(self, env: dict[str, str]) -> None:
        host, _, port = self.listen.rpartition(":")
        if not host or not port.isdigit():
            raise ClusterError(f"--listen expects HOST:PORT, got {self.listen!r}")
        port_n = int(port) or free_port(host)
        metrics_port = free_port() if self.metrics else 0
        argv = [
            *_console_script("cuvis-gateway"),
            "--listen",
            f"{host}:{port_n}",
            "--redis-url",
            self.redis_url,
            "--grace-seconds",
            str(self.grace_seconds),
        ]
        if metrics_port:
            argv += ["--metrics-port", str(metrics_port)]
        argv += list(self.gateway_args)
        self.gateway = Child("gateway", argv, self.home / "gateway.log", f"{host}:{port_n}", metrics_port)
        self.gateway.start(self.home, env)

    def _wait_ready(self) -> None:
        """Until the gateway is SERVING and every worker is registered (ListWorkers)."""
        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        from cuvis_cluster.wire.gen.cuvis_cluster.internal.v1 import control_pb2, control_pb2_grpc

        assert self.gateway is not None
        deadline = time.monotonic() + self.startup_timeout
        channel = grpc.insecure_channel(self.gateway.address)
        try:
            health = health_pb2_grpc.HealthStub(channel)
            status = control_pb2_grpc.ClusterStatusServiceStub(channel)
            while True:
                for child in [self.redis, self.gateway, *self.worker_procs]:
                    if child is not None and not child.alive():
                        raise ClusterError(f"{child.name} exited during startup:\n{child.tail()}")
                try:
                    ok = health.Check(health_pb2.HealthCheckRequest(), timeout=1.0).status
                    listed = status.ListWorkers(control_pb2.ListWorkersRequest(), timeout=1.0).workers
                    if ok == health_pb2.HealthCheckResponse.SERVING and len(listed) >= self.workers:
                        return
                except grpc.RpcError:
                    pass
                if time.monotonic() > deadline:
                    logs = "\n".join(
                        f"--- {c.name}\n{c.tail(15)}" for c in [self.gateway, *self.worker_procs]
                    )
                    raise ClusterError(f"cluster not ready after {self.startup_timeout:.0f}s\n{logs}")
                time.sleep(0.25)
        finally:
            channel.close()

    def stop(self) -> None:
        """SIGTERM everything (gateway, workers, Redis) and wait; SIGKILL what does not exit."""
        groups: list[list[Child | None]] = [[self.gateway], list(self.worker_procs), [self.redis]]
        for group in groups:
            children = [c for c in group if c is not None]
            for child in children:
                child.signal(signal.SIGTERM)
            deadline = time.monotonic() + self.grace_seconds + 5
            for child in children:
                if not child.wait(max(deadline - time.monotonic(), 0.1)):
                    log.warning("%s did not stop in time; killing it", child.name)
                    child.signal(signal.SIGKILL)
                    child.wait(10)
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
            self.workdir = None
