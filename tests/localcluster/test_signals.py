"""SIGINT, SIGTERM and SIGKILL to ``cuvis-cluster up`` (and one SIGINT to ``demo``) in every phase.

Each test starts ``up`` as a user would, brings it to a phase through a real setup, signals it, and
then checks what a user would notice: no process that ``up`` started is left, and every port it used
binds again. "Started by ``up``" is found without trusting ``up``: every run gets a unique value of
the environment variable ``TAG``, which every descendant inherits (children, grandchildren, the
watchdog), and ``/proc`` is scanned for it. Zombies count as gone (they hold no port and run no code;
reaping orphans is init's job).

Phases and how each is reached:

* before Redis is up: ``--redis-server`` is a wrapper script that creates a marker file, then sleeps
  before exec'ing redis-server (its ``sleep`` is a grandchild, so a SIGKILL of ``up`` also exercises
  the watchdog that kills whole process groups);
* during the readiness wait: a worker command that never listens nor registers (a shell that sleeps),
  so the gateway never has its worker and the cluster never becomes ready; signalled once the
  gateway port accepts connections;
* while serving: stand-in workers, signalled after "Press Ctrl-C to stop.";
* during shutdown: workers that outlive SIGTERM (a shell that traps TERM and keeps looping, marking
  that it got the TERM) and a long grace; the first SIGTERM starts the stop, the second signal
  arrives while the workers are in their grace and must end everything long before the grace does.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from helpers import procs

from cuvis_cluster.wire.pb import pb, pb_grpc

pytestmark = pytest.mark.integration

STANDIN = Path(__file__).resolve().parents[1] / "gateway" / "standin_worker.py"
TAG = "LOCALCLUSTER_SIGNAL_TEST"
GONE_WITHIN = 30.0  # generous bound on the wait for "everything gone"; the assertion is "gone"
LONG_GRACE = "120"  # the shutdown test must not be waiting this out

SLOW_REDIS = """#!/bin/sh
touch "$SLOW_REDIS_MARK"
sleep 120
exec redis-server "$@"
"""

STUBBORN_WORKER = """#!/bin/sh
# A worker that is still "in its grace" long after SIGTERM: the stand-in exits, this shell stays.
trap 'touch "$STUBBORN_MARK"' TERM
"$@" &
while :; do sleep 0.2; done
"""


# -- /proc -------------------------------------------------------------------------------------------
def _state(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[0]


def tagged(tag: str) -> dict[int, list[str]]:
    """Live (not zombie) processes carrying ``TAG=tag`` in their environment: pid -> argv."""
    needle = f"{TAG}={tag}".encode()
    found: dict[int, list[str]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if needle in environ and _state(pid) not in (None, "Z"):
            found[pid] = [a for a in argv if a]
    return found


def ports_in(argvs: list[list[str]]) -> set[int]:
    """Every TCP port named on these command lines (--listen H:P, --port P, --metrics-port P)."""
    ports: set[int] = set()
    for argv in argvs:
        for flag, value in itertools.pairwise(argv):
            if flag == "--listen":
                ports.add(int(value.rsplit(":", 1)[1]))
            elif flag in ("--port", "--metrics-port") and value.isdigit() and int(value):
                ports.add(int(value))
    return ports


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


# -- running up ----------------------------------------------------------------------------------------
@dataclass
class Run:
    proc: subprocess.Popen
    tag: str
    out: Path
    port: int

    def output(self) -> str:
        return self.out.read_text(errors="replace")

    def wait_output(self, text: str, timeout: float = 120.0) -> None:
        procs.wait_for(
            lambda: text in self.output() or self.proc.poll() is not None, timeout=timeout, what=text
        )
        assert text in self.output(), f"{text!r} never printed:\n{self.output()[-3000:]}"


@contextlib.contextmanager
def cluster_command(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> Iterator[Run]:
    """``cuvis-cluster <args>`` in its own session, tagged; afterwards nothing tagged survives."""
    tag = uuid.uuid4().hex
    port = procs.free_port()
    out = tmp_path / "cuvis-cluster.out"
    argv = [str(procs.VENV_BIN / "cuvis-cluster"), *args]
    if "--listen" not in args:
        argv[2:2] = ["--listen", f"127.0.0.1:{port}"]
    full_env = procs.clean_env({TAG: tag, **(env or {})})
    with open(out, "wb") as sink:
        proc = subprocess.Popen(
            argv, stdout=sink, stderr=subprocess.STDOUT, env=full_env, start_new_session=True, cwd=tmp_path
        )
    try:
        yield Run(proc, tag, out, port)
    finally:
        procs.kill_process_group(proc, signal.SIGKILL, timeout=10)
        for pid in tagged(tag):  # only after a failed test: do not leak into the next one
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def up_args(tmp_path: Path, *extra: str, worker: list[str] | None = None) -> list[str]:
    worker_command = worker or [sys.executable, str(STANDIN)]
    return [
        "up",
        "--workers",
        "1",
        "--worker-command",
        " ".join(worker_command),
        "--workdir",
        str(tmp_path / "run"),
        *extra,
    ]


def script(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    path.chmod(0o755)
    return path


def signal_and_check(run: Run, sig: int, started: dict[int, list[str]]) -> str:
    """Send ``sig`` to ``up`` alone; then nothing tagged is left and every port binds again."""
    assert started, "the test reached its phase before up started anything"
    ports = ports_in(list(started.values()))
    run.proc.send_signal(sig)
    procs.wait_for(lambda: not tagged(run.tag), timeout=GONE_WITHIN, what="every child of up gone")
    procs.wait_for(
        lambda: all(procs.port_listenable(p) for p in ports), timeout=GONE_WITHIN, what="ports free"
    )
    run.proc.wait(timeout=GONE_WITHIN)
    return run.output()


def expect_reason(output: str, sig: int, phase: str) -> None:
    name = signal.Signals(sig).name
    line = re.search(rf"cuvis-cluster up: interrupted by {name} while {phase}; stopped \d+ children", output)
    assert line, output[-3000:]


SIGNALS = [signal.SIGINT, signal.SIGTERM, signal.SIGKILL]
IDS = ["SIGINT", "SIGTERM", "SIGKILL"]


@pytest.mark.parametrize("sig", SIGNALS, ids=IDS)
def test_signal_before_redis_is_up(tmp_path, sig):
    mark = tmp_path / "redis-starting"
    redis = script(tmp_path, "slow-redis", SLOW_REDIS)
    args = up_args(tmp_path, "--redis-server", str(redis))
    with cluster_command(tmp_path, *args, env={"SLOW_REDIS_MARK": str(mark)}) as run:
        procs.wait_for(mark.exists, timeout=60, what="the redis wrapper to start")
        output = signal_and_check(run, sig, tagged(run.tag))
        if sig != signal.SIGKILL:
            assert run.proc.returncode == 128 + sig
            expect_reason(output, sig, "starting redis-server")
            assert "starting the workers" not in output, "nothing may start after the signal"


@pytest.mark.parametrize("sig", SIGNALS, ids=IDS)
def test_signal_during_readiness_wait(tmp_path, sig):
    silent = script(tmp_path, "silent-worker", "#!/bin/sh\nexec sleep 600\n")
    args = up_args(tmp_path, "--grace-seconds", "3", worker=["sh", str(silent)])
    with cluster_command(tmp_path, *args) as run:
        run.wait_output("waiting for the gateway to become ready")
        procs.wait_for(lambda: port_open(run.port), timeout=120, what="the gateway port")
        output = signal_and_check(run, sig, tagged(run.tag))
        if sig != signal.SIGKILL:
            assert run.proc.returncode == 128 + sig
            expect_reason(output, sig, "waiting for the gateway to become ready")


@pytest.mark.parametrize("sig", SIGNALS, ids=IDS)
def test_signal_while_serving(tmp_path, sig):
    with cluster_command(tmp_path, *up_args(tmp_path, "--grace-seconds", "3")) as run:
        run.wait_output("Press Ctrl-C to stop.")
        output = signal_and_check(run, sig, tagged(run.tag))
        if sig != signal.SIGKILL:
            assert run.proc.returncode == 128 + sig
            expect_reason(output, sig, "serving")


@pytest.mark.parametrize("sig", SIGNALS, ids=IDS)
def test_second_signal_during_shutdown_ends_the_grace(tmp_path, sig):
    mark = tmp_path / "worker-got-sigterm"
    stubborn = script(tmp_path, "stubborn-worker", STUBBORN_WORKER)
    worker = ["sh", str(stubborn), sys.executable, str(STANDIN)]
    args = up_args(tmp_path, "--grace-seconds", LONG_GRACE, worker=worker)
    with cluster_command(tmp_path, *args, env={"STUBBORN_MARK": str(mark)}) as run:
        run.wait_output("Press Ctrl-C to stop.")
        started = tagged(run.tag)
        run.proc.send_signal(signal.SIGTERM)
        procs.wait_for(mark.exists, timeout=60, what="the worker to be in its grace")
        assert run.proc.poll() is None, "up waits for workers in their grace"
        output = signal_and_check(run, sig, started)
        if sig != signal.SIGKILL:
            assert run.proc.returncode == 128 + signal.SIGTERM
            assert "SIGKILLed" in output, output[-3000:]
            expect_reason(output, signal.SIGTERM, "serving")


def test_demo_stops_the_cluster_on_sigint(tmp_path):
    args = ["demo", "--workers", "1", "--out", str(tmp_path / "out")]
    with cluster_command(tmp_path, *args) as run:
        run.wait_output("waiting for the gateway to become ready")
        output = signal_and_check(run, signal.SIGINT, tagged(run.tag))
        assert run.proc.returncode == 128 + signal.SIGINT
        assert re.search(r"cuvis-cluster demo: interrupted by SIGINT while \w", output), output[-3000:]
        assert "cluster stopped" in output


def test_up_with_a_token_file_becomes_ready_and_serves_only_with_the_token(tmp_path):
    """The issue's setup: a gateway that requires tokens. `up`'s readiness check cannot authenticate,
    so it counts the workers' registrations in Redis instead; clients then need the token."""
    tokens = tmp_path / "tokens"
    tokens.write_text("secret-token alice\n")
    args = up_args(tmp_path, f"--gateway-arg=--auth-token-file={tokens}", "--grace-seconds", "3")
    with cluster_command(tmp_path, *args) as run:
        run.wait_output("Press Ctrl-C to stop.")
        channel = grpc.insecure_channel(f"127.0.0.1:{run.port}")
        try:
            stub = pb_grpc.CuvisAIServiceStub(channel)
            with pytest.raises(grpc.RpcError) as info:
                stub.CreateSession(pb.CreateSessionRequest(), timeout=30)
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
            token = [("authorization", "Bearer secret-token")]
            session = stub.CreateSession(pb.CreateSessionRequest(), metadata=token, timeout=30).session_id
            assert session
            stub.CloseSession(pb.CloseSessionRequest(session_id=session), metadata=token, timeout=30)
        finally:
            channel.close()
        signal_and_check(run, signal.SIGTERM, tagged(run.tag))
        assert run.proc.returncode == 128 + signal.SIGTERM
