"""Sessions: per-client state, limits, idle expiry and the per-session training lock.

:class:`SessionManager` is the ``SessionDirectory`` the gateway side relies on (``list``, ``capacity``,
``count``, ``draining``, ``set_draining``, ``add_listener``). Everything is thread-safe; the reaper is a
daemon thread that closes sessions idle for longer than the timeout (a session that is training is never
idle) and frees their memory, including ``torch.cuda.empty_cache`` when CUDA is in use.
"""

from __future__ import annotations

import builtins
import contextlib
import gc
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol

import torch

from cuvis_cluster.engine.nodes.base import NodeRegistry
from cuvis_cluster.engine.pipeline import Pipeline
from cuvis_cluster.engine.plugins import LoadedPlugin
from cuvis_cluster.engine.profiling import Profiler
from cuvis_cluster.engine.training.run import TrainRun
from cuvis_cluster.engine.types import JsonObject, ProgressEvent
from cuvis_cluster.errors import FailedPrecondition, NotFound, ResourceExhausted, Unavailable

log = logging.getLogger(__name__)

TRAINING_IN_PROGRESS = "training in progress"


class SessionListener(Protocol):
    def session_created(self, session: Session) -> None: ...

    def session_closed(self, session_id: str) -> None: ...


class RWLock:
    """Many readers or one writer; writers do not starve (new readers wait while a writer waits)."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._readers = 0
        self._writer = False
        self._waiting_writers = 0

    @contextlib.contextmanager
    def read(self) -> Iterator[None]:
        with self._cond:
            while self._writer or self._waiting_writers:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if not self._readers:
                    self._cond.notify_all()

    @contextlib.contextmanager
    def write(self) -> Iterator[None]:
        with self._cond:
            self._waiting_writers += 1
            try:
                while self._writer or self._readers:
                    self._cond.wait()
            finally:
                self._waiting_writers -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()


class Session:
    """One client's state. Fields are read and written by the engine facade under :attr:`lock`."""

    def __init__(
        self,
        session_id: str,
        owner: str | None,
        search_paths: list[Path],
        registry: NodeRegistry | None = None,
    ) -> None:
        now = time.time()
        self.id = session_id
        self.owner = owner
        self.created_at = now
        self.last_used = now
        self.search_paths: list[Path] = list(search_paths)
        self.registry = registry if registry is not None else NodeRegistry()
        self.pipeline: Pipeline | None = None
        self.trainrun: JsonObject | None = None  # validated TrainRunConfig (JSON form)
        self.data_config: JsonObject | None = None
        self.training_config: JsonObject | None = None
        self.train_run: TrainRun | None = None  # the current or last run
        self.last_event: ProgressEvent | None = None  # latest event of any run
        self.profiler: Profiler | None = None  # created by the first SetProfiling
        self.plugins: dict[str, LoadedPlugin] = {}  # loaded by LoadPlugin, by registered name
        self.lock = RWLock()
        self.closed = False
        self._state = threading.Lock()
        self._training = False

    # -- bookkeeping -----------------------------------------------------------------------------
    def touch(self) -> None:
        self.last_used = time.time()

    @property
    def training(self) -> bool:
        return self._training

    def begin_training(self) -> None:
        """Set the training flag; FailedPrecondition when a run is already going."""
        with self._state:
            if self._training:
                raise FailedPrecondition(f"session {self.id}: {TRAINING_IN_PROGRESS}")
            self._training = True

    def end_training(self) -> None:
        with self._state:
            self._training = False
        self.touch()

    @contextlib.contextmanager
    def mutating(self, what: str = "") -> Iterator[None]:
        """Exclusive access for a call that changes the session; refused while training."""
        self.refuse_if_training(what)
        with self.lock.write():
            self.refuse_if_training(what)
            self.touch()
            yield

    @contextlib.contextmanager
    def reading(self) -> Iterator[None]:
        """Shared access (inference, introspection); allowed while training and concurrently."""
        with self.lock.read():
            self.touch()
            yield

    def refuse_if_training(self, what: str) -> None:
        """FailedPrecondition naming ``what`` while a run trains in this session."""
        if self._training:
            prefix = f"{what}: " if what else ""
            raise FailedPrecondition(f"{prefix}{TRAINING_IN_PROGRESS} in session {self.id}; stop it or wait")

    # -- teardown --------------------------------------------------------------------------------
    def release(self) -> None:
        """Cancel a running train run and drop every tensor the session holds."""
        self.closed = True
        run = self.train_run
        if run is not None:
            with contextlib.suppress(Exception):
                run.cancel("session closed")
            with contextlib.suppress(Exception):
                run.join(timeout=30)
        if self.pipeline is not None:
            for node in self.pipeline.nodes.values():
                cleanup = getattr(node, "cleanup", None)  # hosted upstream nodes: TensorBoard writers
                if callable(cleanup):
                    with contextlib.suppress(Exception):
                        cleanup()
        self.pipeline = None
        self.train_run = None
        self.profiler = None
        self.plugins.clear()
        self.registry.clear_plugins()


class SessionManager:
    """Holds the sessions of one worker."""

    def __init__(
        self,
        *,
        max_sessions: int = 16,
        idle_timeout_seconds: float = 3600.0,
        reap_interval_seconds: float = 30.0,
        default_search_paths: Callable[[], list[Path]] | None = None,
        registry_factory: Callable[[], NodeRegistry] | None = None,
    ) -> None:
        self.max_sessions = int(max_sessions)
        # Builds each session's node registry (allow-listed class packages, output root for hosted nodes).
        self._registry_factory = registry_factory or NodeRegistry
        self.idle_timeout_seconds = float(idle_timeout_seconds)
        self.reap_interval_seconds = float(reap_interval_seconds)
        self._default_paths = default_search_paths or (lambda: [])
        self._sessions: dict[str, Session] = {}
        self._lock = threading.Lock()
        self._listeners: list[SessionListener] = []
        self._draining = False
        self._stop = threading.Event()
        self._reaper: threading.Thread | None = None

    # -- SessionDirectory protocol ---------------------------------------------------------------
    def list(self) -> list[Session]:
        with self._lock:
            return list(self._sessions.values())

    @property
    def capacity(self) -> int:
        return self.max_sessions

    @property
    def count(self) -> int:
        with self._lock:
            return len(self._sessions)

    @property
    def draining(self) -> bool:
        return self._draining

    def set_draining(self, draining: bool) -> None:
        self._draining = bool(draining)

    def add_listener(self, listener: SessionListener) -> None:
        with self._lock:
            self._listeners.append(listener)

    # -- lifecycle -------------------------------------------------------------------------------
    def create(self, owner: str | None = None) -> Session:
        with self._lock:
            if self._draining:
                raise Unavailable("worker is draining; create the session on another worker")
            if len(self._sessions) >= self.max_sessions:
                raise ResourceExhausted(
                    f"this worker holds the maximum of {self.max_sessions} sessions; close one or retry later"
                )
            session_id = str(uuid.uuid4())
            session = Session(session_id, owner, self._default_paths(), self._registry_factory())
            self._sessions[session_id] = session
            listeners = list(self._listeners)
        for listener in listeners:
            try:
                listener.session_created(session)
            except Exception:  # a listener must never break session creation
                log.exception("session listener failed on create")
        return session

    def get(self, session_id: str, owner: str | None = None) -> Session:
        """The live session; NotFound for unknown or closed ids (and for another owner's session)."""
        with self._lock:
            session = self._sessions.get(session_id or "")
        if session is None or (owner is not None and session.owner is not None and session.owner != owner):
            raise NotFound(f"Session {session_id} not found", field="session_id")
        return session

    def close(self, session_id: str, owner: str | None = None) -> None:
        with self._lock:
            session = self._sessions.get(session_id or "")
            if session is None or (
                owner is not None and session.owner is not None and session.owner != owner
            ):
                raise NotFound(f"Session {session_id} not found", field="session_id")
            del self._sessions[session_id]
            listeners = list(self._listeners)
        self._release(session)
        for listener in listeners:
            try:
                listener.session_closed(session_id)
            except Exception:
                log.exception("session listener failed on close")

    def close_all(self) -> None:
        for session in self.list():
            with contextlib.suppress(NotFound):
                self.close(session.id)

    def _release(self, session: Session) -> None:
        session.release()
        free_memory()

    # -- idle expiry -----------------------------------------------------------------------------
    def reap(self, now: float | None = None) -> builtins.list[str]:  # `list` is a method here
        """Close every session idle for longer than the timeout; returns their ids."""
        now = time.time() if now is None else now
        expired = [
            s.id for s in self.list() if not s.training and now - s.last_used > self.idle_timeout_seconds
        ]
        closed = []
        for session_id in expired:
            try:
                self.close(session_id)
                closed.append(session_id)
                log.info("closed idle session %s", session_id)
            except NotFound:
                pass
        return closed

    def start(self) -> None:
        if self._reaper is not None and self._reaper.is_alive():
            return
        self._stop.clear()
        self._reaper = threading.Thread(target=self._reap_loop, name="session-reaper", daemon=True)
        self._reaper.start()

    def stop(self) -> None:
        self._stop.set()
        if self._reaper is not None:
            self._reaper.join(timeout=5)
            self._reaper = None

    def _reap_loop(self) -> None:
        interval = max(0.05, min(self.reap_interval_seconds, self.idle_timeout_seconds))
        while not self._stop.wait(interval):
            try:
                self.reap()
            except Exception:
                log.exception("session reaper failed")


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()
