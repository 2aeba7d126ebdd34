"""A real cluster for the fuzz: redis-server, one real ``cuvis-worker`` (the engine is what is fuzzed) and a
gateway in front of it, all on 127.0.0.1, with a file-system layout built to catch escapes.

Layout under one temporary directory::

    configs/   a copy of the bundled configs (the worker's configs root)
    data/      the data root; ``escape`` links to ``outside/``, ``loop`` links to itself
    plugins/   the (empty) plugin root
    outputs/   the output root, the only place the worker may write; ``escape`` links to ``outside/``,
               ``dangling.yaml`` to a file that does not exist in ``outside/``
    outside/   what the traversal strings aim at: a secret config, a secret weights file
    run/       the processes' working directory (logs, redis data)

:class:`Tree` snapshots every file and link outside ``outputs/`` (``run/`` too, minus the logs) so a test
can assert that nothing there was created, changed or removed.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from helpers import procs
from helpers.cuvis import statistically_trained
from helpers.gateways import start_gateway

from cuvis_cluster.wire.pb import pb, pb_grpc

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
# Files the servers themselves write in their working directory.
_RUN_FILES = {"redis.log", "worker.log", "gateway.log"}


def _entry(path: Path) -> tuple[str, int, int] | tuple[str, str]:
    st = path.lstat()
    if path.is_symlink():
        return ("link", os.readlink(path))
    if path.is_dir():
        return ("dir", 0, 0)
    return ("file", st.st_size, st.st_mtime_ns)


@dataclass
class Tree:
    """The fuzz's directories and a snapshot of everything the worker must not touch."""

    base: Path
    configs: Path = field(init=False)
    data: Path = field(init=False)
    plugins: Path = field(init=False)
    outputs: Path = field(init=False)
    outside: Path = field(init=False)
    run: Path = field(init=False)

    def __post_init__(self) -> None:
        self.configs = self.base / "configs"
        self.data = self.base / "data"
        self.plugins = self.base / "plugins"
        self.outputs = self.base / "outputs"
        self.outside = self.base / "outside"
        self.run = self.base / "run"

    def build(self) -> None:
        shutil.copytree(CONFIGS, self.configs)
        for folder in (self.data, self.plugins, self.outputs, self.outside, self.run):
            folder.mkdir()
        (self.outside / "secret.yaml").write_text("nodes: []\nsecret: outside-the-roots\n")
        (self.outside / "secret.pt").write_bytes(b"not weights")
        (self.data / "escape").symlink_to(self.outside, target_is_directory=True)
        (self.data / "loop").symlink_to(self.data / "loop")
        (self.outputs / "escape").symlink_to(self.outside, target_is_directory=True)
        (self.outputs / "dangling.yaml").symlink_to(self.outside / "created-through-a-link.yaml")

    def snapshot(self) -> dict[str, tuple]:
        """Every entry under the base except the output root's contents and the servers' own files."""
        found: dict[str, tuple] = {}
        for root, dirs, files in os.walk(self.base, followlinks=False):
            here = Path(root)
            for name in [*dirs, *files]:
                path = here / name
                rel = path.relative_to(self.base)
                if (
                    rel.parts[0] == "outputs"
                    and len(rel.parts) > 1
                    and rel.parts[1]
                    not in (
                        "escape",
                        "dangling.yaml",
                    )
                ):
                    continue
                if rel.parts[0] == "run" and (name in _RUN_FILES or "redis-data" in rel.parts):
                    continue
                found[str(rel)] = _entry(path)
        return found


@dataclass
class FuzzCluster:
    tree: Tree
    redis: procs.ServerProcess
    worker: procs.ServerProcess
    gateway: procs.ServerProcess
    stub: pb_grpc.CuvisAIServiceStub
    channel: grpc.Channel
    _trained: str = ""

    @property
    def processes(self) -> list[procs.ServerProcess]:
        return [self.redis, self.worker, self.gateway]

    def dead(self) -> list[str]:
        return [f"{p.name} (exit {p.proc.returncode})" for p in self.processes if not p.alive()]

    def trained_session(self) -> str:
        """A session with a statistically trained RX pipeline; made again when a fuzzed call closed it."""
        if self._trained:
            try:
                self.stub.GetPipelineInputs(pb.GetPipelineInputsRequest(session_id=self._trained), timeout=30)
                return self._trained
            except grpc.RpcError:
                pass  # closed by a fuzzed CloseSession, or its pipeline replaced: build another
        session_id = self.stub.CreateSession(pb.CreateSessionRequest(), timeout=30).session_id
        statistically_trained(self.stub, session_id)
        self._trained = session_id
        return session_id


@pytest.fixture(scope="module")
def fuzz_cluster(tmp_path_factory) -> Iterator[FuzzCluster]:
    tree = Tree(tmp_path_factory.mktemp("fuzz"))
    tree.build()
    started: list[procs.ServerProcess] = []
    try:
        redis = procs.start_redis(tree.run)
        started.append(redis)
        redis_url = f"redis://{redis.address}/0"
        worker = procs.start_worker(
            tree.run,
            "--device",
            "cpu",
            "--redis-url",
            redis_url,
            "--heartbeat-seconds",
            "0.5",
            "--heartbeat-ttl-seconds",
            "4",
            "--configs-dir",
            str(tree.configs),
            "--data-dir",
            str(tree.data),
            "--plugin-dirs",
            str(tree.plugins),
            "--max-sessions",
            "64",
            metrics=False,
            output_dir=tree.outputs,
        )
        started.append(worker)
        gateway = start_gateway(tree.run, redis_url, "gateway")
        started.append(gateway)
        channel = gateway.channel()
        stub = pb_grpc.CuvisAIServiceStub(channel)
        # The gateway learns the worker from Redis: wait until a call is routed.
        procs.wait_for(lambda: _routed(stub), timeout=60, what="the gateway to route to the worker")
        yield FuzzCluster(tree, redis, worker, gateway, stub, channel)
    finally:
        for server in reversed(started):
            server.stop()


def _routed(stub: pb_grpc.CuvisAIServiceStub) -> bool:
    try:
        stub.GetTrainingCapabilities(pb.GetTrainingCapabilitiesRequest(), timeout=5)
    except grpc.RpcError as exc:
        print(f"gateway not routing yet: {exc.code().name}", file=sys.stderr)
        return False
    return True
