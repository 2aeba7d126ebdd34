"""Supervises a whole cluster on loopback: a real ``redis-server``, N ``cuvis-worker`` processes, one gateway.

Python API (tests, examples)::

    with LocalCluster(workers=2) as cluster:
        channel = grpc.insecure_channel(cluster.address)
        ...

Every child runs in its own process group (so a Ctrl-C in the terminal reaches the supervisor alone,
which then stops the children in order) and logs to ``<workdir>/<name>.log``; :meth:`stop` sends
SIGTERM to each group (gateway first, then workers, then Redis) and SIGKILLs whatever outlives the
grace period. Redis runs without persistence (``--save '' --appendonly no``) in a temporary directory.

The workers trust only the cluster: each start writes a fresh random cluster credential to
``<workdir>/cluster-token`` (mode 0600) and hands it to the gateway and every worker
(``--cluster-token-file``), so a call made to a worker's port directly is UNAUTHENTICATED and clients
go through the gateway. A custom ``worker_command`` finds the file in ``CUVIS_CLUSTER_TOKEN_FILE``.

Children cannot outlive the supervisor, even when it is SIGKILLed: on Linux each child gets
``PR_SET_PDEATHSIG(SIGKILL)`` (the kernel kills it when the thread that started it exits, so start the
cluster from a thread that lives as long as the cluster: the main thread in ``cuvis-cluster``), and a
watchdog process (:class:`~cuvis_cluster.common.children.GroupWatchdog`) SIGKILLs every child's
process group, grandchildren included, when the supervisor dies without stopping them. Where there is
no ``prctl`` (macOS) the watchdog alone does it.

Signals: :meth:`LocalCluster.handle_signals` (used by ``cuvis-cluster up`` and ``demo``) turns the
first SIGINT/SIGTERM in any phase (starting Redis, starting workers and the gateway, the readiness
wait, serving) into :class:`Interrupted`, which names the phase; ``start`` stops what it had started
before re-raising it. A signal while stopping (a second Ctrl-C, say) SIGKILLs every remaining child
at once instead of waiting out the grace period.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from cuvis_cluster.common.children import GroupWatchdog, popen_kwargs, signal_group
from cuvis_cluster.common.ports import free_port

log = logging.getLogger(__name__)

# How long registrations must have been in Redis before a gateway that refuses ListWorkers to the
# readiness check is taken to have seen them: four of its registry polls.
REGISTRY_POLLS_WAIT = 2.0
REDIS_INSTALL_HINT = "apt-get install --no-install-recommends redis-server"


class ClusterError(RuntimeError):
    """The local cluster could not be started."""


class Interrupted(BaseException):
    """SIGINT or SIGTERM arrived while the cluster was ``phase`` (a BaseException, like Ctrl-C)."""

    def __init__(self, signum: int, phase: str) -> None:
        self.signum = signum
        self.signal_name = signal.Signals(signum).name
        self.phase = phase
        super().__init__(f"interrupted by {self.signal_name} while {phase}")


# What the cluster is doing, as named in messages ("interrupted by SIGTERM while <phase>").
PHASE_IDLE = "not started"
PHASE_REDIS = "starting redis-server"
PHASE_WORKERS = "starting the workers"
PHASE_GATEWAY = "starting the gateway"
PHASE_READY = "waiting for the gateway to become ready"
PHASE_SERVING = "serving"
PHASE_STOPPING = "stopping"


def find_redis_server(command: str | None = None) -> str:
    """``command`` (a path or a name on PATH) or ``redis-server`` from PATH."""
    binary = shutil.which(command or "redis-server")
    if binary is None and command:
        raise ClusterError(f"--redis-server {command!r} is not an executable file")
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


def write_cluster_token(path: Path) -> Path:
    """A fresh random cluster credential in ``path``, readable by this user only."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # a file left by an earlier run keeps its mode otherwise
        os.write(fd, (secrets.token_urlsafe(32) + "\n").encode("ascii"))
    finally:
        os.close(fd)
    return path


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
                **popen_kwargs(),  # own process group; SIGKILLed by the kernel if we die (Linux)
            )

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: int) -> None:
        """Send ``sig`` to the child's process group (leftover group members too, once it exited)."""
        if self.proc is not None:
            signal_group(self.proc, sig)

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
    ``cuvis-worker`` (it must accept ``--listen``, ``--redis-url`` and ``--metrics-port``, and gets the
    credential file in ``CUVIS_CLUSTER_TOKEN_FILE``);
    ``worker_args`` / ``gateway_args`` are extra flags for every worker / the gateway.
    ``redis_server`` replaces ``redis-server`` from PATH. ``progress`` is called with each phase
    (:data:`PHASE_REDIS`, ...) as the cluster enters it.
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
    redis_server: str | None = None
    progress: Callable[[str], None] | None = None
    phase: str = field(default=PHASE_IDLE, init=False)
    redis: Child | None = field(default=None, init=False)
    worker_procs: list[Child] = field(default_factory=list, init=False)
    gateway: Child | None = field(default=None, init=False)
    _tmp: tempfile.TemporaryDirectory | None = field(default=None, init=False, repr=False)
    _watchdog: GroupWatchdog | None = field(default=None, init=False, repr=False)
    _signal: int | None = field(default=None, init=False, repr=False)  # first SIGINT/SIGTERM seen
    _shield: int = field(default=0, init=False, repr=False)  # >0: defer Interrupted (spawning)
    _hurry: bool = field(default=False, init=False, repr=False)  # kill now, skip the grace
    killed: list[str] = field(default_factory=list, init=False)  # children SIGKILLed by stop()
    cluster_token_file: Path | None = field(default=None, init=False)  # written by start()
    stopped: int | None = field(default=None, init=False)  # children stopped by stop(), once it ran

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

    @property
    def children(self) -> list[Child]:
        """Every child started so far, in stopping order: gateway, workers, Redis."""
        found = [self.gateway, *self.worker_procs, self.redis]
        return [c for c in found if c is not None and c.proc is not None]

    def _enter(self, phase: str) -> None:
        self.phase = phase
        if self.progress is not None:
            self.progress(phase)

    # -- signals -----------------------------------------------------------------------------------
    @contextlib.contextmanager
    def handle_signals(self) -> Iterator[None]:
        """SIGINT/SIGTERM handling for the ``with`` body; call from the main thread.

        The first signal raises :class:`Interrupted` naming the current phase (deferred while a child
        is being spawned, so that every started child is recorded and will be stopped). Any later
        signal, or any signal once :meth:`stop` runs, SIGKILLs every child group at once.
        Previous handlers are restored on exit.
        """
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        if self._signal is not None or self.phase == PHASE_STOPPING:
            # Already on the way out: a second signal means "now".
            self._signal = self._signal or signum
            self.kill_now()
            return
        self._signal = signum
        if self._shield == 0:
            raise Interrupted(signum, self.phase)

    @contextlib.contextmanager
    def _shielded(self) -> Iterator[None]:
        """Defer an Interrupted until the body (start a child and record it) is done."""
        self._shield += 1
        try:
            yield
        finally:
            self._shield -= 1
        if self._shield == 0 and self._signal is not None and self.phase != PHASE_STOPPING:
            raise Interrupted(self._signal, self.phase)

    def kill_now(self) -> None:
        """SIGKILL every child's process group without waiting (safe in a signal handler)."""
        self._hurry = True
        for child in self.children:
            if child.alive() and child.name not in self.killed:
                self.killed.append(child.name)
            child.signal(signal.SIGKILL)

    @property
    def signal_received(self) -> int | None:
        """The first SIGINT/SIGTERM seen under :meth:`handle_signals`, if any."""
        return self._signal

    # -- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> LocalCluster:
        redis_binary = find_redis_server(self.redis_server)
        self.stopped = None
        if self.workers < 1:
            raise ClusterError("--workers must be at least 1")
        if self.workdir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="cuvis-cluster-")
            self.workdir = Path(self._tmp.name)
        self.workdir.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("CUVIS_")}
        env.setdefault("PYTHONUNBUFFERED", "1")
        env.update(self.env or {})
        self.cluster_token_file = write_cluster_token(self.home / "cluster-token")
        try:
            with self._shielded():
                self._watchdog = GroupWatchdog.start()
            self._enter(PHASE_REDIS)
            self._start_redis(redis_binary, env)
            self._enter(PHASE_WORKERS)
            for i in range(self.workers):
                self._start_worker(i, env)
            self._enter(PHASE_GATEWAY)
            self._start_gateway(env)
            self._enter(PHASE_READY)
            self._wait_ready()
            self._enter(PHASE_SERVING)
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
        with self._shielded():
            self.redis = Child("redis", argv, self.home / "redis.log", address=f"127.0.0.1:{port}")
            self._spawn(self.redis, data, env)
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
        if self.worker_command:
            # Its contract is three flags; the credential comes the other way every binary reads it.
            env = {**env, "CUVIS_CLUSTER_TOKEN_FILE": str(self.cluster_token_file)}
        else:
            argv += ["--cluster-token-file", str(self.cluster_token_file)]
            # One output root for every worker, as the chart's shared outputs volume: a pipeline saved
            # through one worker can be loaded by a session that lives on another.
            outputs = self.home / "outputs"
            argv += ["--output-dir", str(outputs), "--grace-seconds", str(self.grace_seconds)]
        argv += list(self.worker_args)
        child = Child(name, argv, self.home / f"{name}.log", f"127.0.0.1:{port}", metrics_port)
        with self._shielded():
            self.worker_procs.append(child)
            self._spawn(child, home, env)

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
            "--cluster-token-file",
            str(self.cluster_token_file),
        ]
        if metrics_port:
            argv += ["--metrics-port", str(metrics_port)]
        argv += list(self.gateway_args)
        with self._shielded():
            self.gateway = Child("gateway", argv, self.home / "gateway.log", f"{host}:{port_n}", metrics_port)
            self._spawn(self.gateway, self.home, env)

    def _spawn(self, child: Child, cwd: Path, env: dict[str, str]) -> None:
        child.start(cwd, env)
        if child.proc is not None:
            self.watch(child.proc)

    def watch(self, proc: subprocess.Popen) -> None:
        """Have the watchdog SIGKILL ``proc``'s process group should this process die (started with
        :func:`~cuvis_cluster.common.children.popen_kwargs`); the caller still stops it normally."""
        if self._watchdog is not None:
            self._watchdog.watch(proc.pid)

    def _wait_ready(self) -> None:
        """Until the gateway is SERVING and every worker is registered.

        The gateway's own view (ListWorkers) is asked first. A gateway that requires credentials
        (tokens or mTLS) refuses that call to this unauthenticated check; then the registrations in
        Redis, which that gateway reads too, tell instead."""
        import grpc
        import redis
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        from cuvis_cluster.routing import redis_schema
        from cuvis_cluster.wire.pb import control_pb2, control_pb2_grpc

        assert self.gateway is not None
        deadline = time.monotonic() + self.startup_timeout
        channel = grpc.insecure_channel(self.gateway.address)
        store = redis.Redis.from_url(self.redis_url, socket_timeout=1.0, socket_connect_timeout=1.0)
        refused = (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)

        in_redis_since: float | None = None

        def registered() -> int:
            nonlocal in_redis_since
            try:
                listed = status.ListWorkers(control_pb2.ListWorkersRequest(), timeout=1.0).workers
                return len(listed)
            except grpc.RpcError as exc:
                if exc.code() not in refused:
                    raise
            count = len(redis_schema.registered_workers(store))
            if count < self.workers:
                in_redis_since = None
                return count
            # The gateway learns of registrations by polling Redis (every 0.5 s by default): count them
            # only once they have been there for a few of its polls, so the first call finds them.
            now = time.monotonic()
            in_redis_since = in_redis_since or now
            return count if now - in_redis_since >= REGISTRY_POLLS_WAIT else 0

        try:
            health = health_pb2_grpc.HealthStub(channel)
            status = control_pb2_grpc.ClusterStatusServiceStub(channel)
            while True:
                for child in [self.redis, self.gateway, *self.worker_procs]:
                    if child is not None and not child.alive():
                        raise ClusterError(f"{child.name} exited during startup:\n{child.tail()}")
                try:
                    ok = health.Check(health_pb2.HealthCheckRequest(), timeout=1.0).status
                    if ok == health_pb2.HealthCheckResponse.SERVING and registered() >= self.workers:
                        return
                except (grpc.RpcError, redis.RedisError):
                    pass
                if time.monotonic() > deadline:
                    logs = "\n".join(
                        f"--- {c.name}\n{c.tail(15)}" for c in [self.gateway, *self.worker_procs]
                    )
                    raise ClusterError(f"cluster not ready after {self.startup_timeout:.0f}s\n{logs}")
                time.sleep(0.25)
        finally:
            channel.close()
            store.close()

    def stop(self) -> int:
        """SIGTERM everything (gateway, workers, Redis) and wait; SIGKILL what does not exit.

        Each stage (the gateway; all workers together; Redis) gets ``grace_seconds`` + 5 s, then its
        process groups are SIGKILLed. A signal during the stop (under :meth:`handle_signals`) SIGKILLs
        everything at once. Returns how many children were stopped; the names of the ones that had
        to be SIGKILLed are in :attr:`killed`. Safe to call more than once.
        """
        if self.stopped is not None:
            return self.stopped
        self.phase = PHASE_STOPPING
        stopped = 0
        if self._hurry:
            self.kill_now()
        groups: list[list[Child | None]] = [[self.gateway], list(self.worker_procs), [self.redis]]
        for group in groups:
            children = [c for c in group if c is not None and c.proc is not None]
            for child in children:
                child.signal(signal.SIGTERM)
            deadline = time.monotonic() + self.grace_seconds + 5
            for child in children:
                # Short waits, so that a kill_now() from a signal handler is noticed at once.
                while not child.wait(0.2) and time.monotonic() < deadline and not self._hurry:
                    pass
                if child.alive() and not self._hurry:
                    log.warning("%s did not stop in time; killing it", child.name)
                if child.alive() and child.name not in self.killed:
                    self.killed.append(child.name)
                # Leftover members of the group (grandchildren) go with the leader.
                child.signal(signal.SIGKILL)
                child.wait(10)
                if self._watchdog is not None and child.proc is not None:
                    self._watchdog.forget(child.proc.pid)
                stopped += 1
        self.stopped = stopped
        if self._watchdog is not None:
            self._watchdog.close()
            self._watchdog = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
            self.workdir = None
        return stopped
