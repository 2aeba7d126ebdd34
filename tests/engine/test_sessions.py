"""SessionManager: limits, idle expiry, draining, listeners and the per-session training lock."""

from __future__ import annotations

import threading
import time
import uuid

import pytest

from cuvis_cluster.engine.sessions import SessionManager
from cuvis_cluster.errors import FailedPrecondition, NotFound, ResourceExhausted, Unavailable


def manager(**kwargs) -> SessionManager:
    kwargs.setdefault("max_sessions", 4)
    return SessionManager(**kwargs)


def test_ids_are_uuid4_and_unique():
    m = manager()
    ids = {m.create().id for _ in range(4)}
    assert len(ids) == 4
    assert all(uuid.UUID(i).version == 4 for i in ids)


def test_limit_gives_resource_exhausted_and_close_frees_a_slot():
    m = manager(max_sessions=2)
    a = m.create()
    m.create()
    with pytest.raises(ResourceExhausted):
        m.create()
    m.close(a.id)
    assert m.count == 1 and m.capacity == 2
    m.create()


def test_close_unknown_or_twice_is_not_found():
    m = manager()
    s = m.create()
    m.close(s.id)
    with pytest.raises(NotFound):
        m.close(s.id)
    with pytest.raises(NotFound):
        m.close("no-such-session")
    with pytest.raises(NotFound):
        m.get(s.id)


def test_owner_is_recorded_and_other_owners_do_not_see_the_session():
    m = manager()
    s = m.create(owner="alice")
    assert m.get(s.id, owner="alice") is s
    with pytest.raises(NotFound):
        m.get(s.id, owner="bob")
    with pytest.raises(NotFound):
        m.close(s.id, owner="bob")
    assert m.get(s.id) is s  # no owner given: the worker itself


def test_draining_refuses_new_sessions_with_unavailable():
    m = manager()
    existing = m.create()
    m.set_draining(True)
    assert m.draining
    with pytest.raises(Unavailable, match="draining"):
        m.create()
    assert m.get(existing.id) is existing  # existing sessions keep working
    m.set_draining(False)
    m.create()


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []

    def session_created(self, session) -> None:
        self.events.append(("created", session.id))

    def session_closed(self, session_id: str) -> None:
        self.events.append(("closed", session_id))


def test_listeners_see_create_and_close():
    m = manager()
    rec = Recorder()
    m.add_listener(rec)
    s = m.create()
    m.close(s.id)
    assert rec.events == [("created", s.id), ("closed", s.id)]


def test_list_reports_ids_owner_and_times():
    m = manager()
    before = time.time()
    s = m.create(owner="o")
    (entry,) = m.list()
    assert entry.id == s.id and entry.owner == "o"
    assert before <= entry.created_at <= entry.last_used <= time.time()


def test_reap_closes_idle_sessions_but_not_training_ones():
    m = manager(idle_timeout_seconds=60)
    idle, busy, fresh = m.create(), m.create(), m.create()
    now = time.time()
    idle.last_used = busy.last_used = now - 120
    busy.begin_training()
    closed = m.reap(now=now)
    assert closed == [idle.id]
    assert {s.id for s in m.list()} == {busy.id, fresh.id}


def test_reaper_thread_expires_idle_sessions():
    m = manager(idle_timeout_seconds=0.2, reap_interval_seconds=0.05)
    rec = Recorder()
    m.add_listener(rec)
    s = m.create()
    m.start()
    try:
        deadline = time.monotonic() + 10
        while m.count and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        m.stop()
    assert m.count == 0
    assert ("closed", s.id) in rec.events
    with pytest.raises(NotFound):
        m.get(s.id)


def test_touch_keeps_a_session_alive():
    m = manager(idle_timeout_seconds=60)
    s = m.create()
    s.last_used = time.time() - 120
    s.touch()
    assert m.reap() == []


def test_training_flag_refuses_mutations_but_allows_reads():
    m = manager()
    s = m.create()
    s.begin_training()
    with pytest.raises(FailedPrecondition, match="training in progress"):
        s.begin_training()
    with pytest.raises(FailedPrecondition, match="training in progress"), s.mutating("LoadPipeline"):
        pass
    with s.reading():
        pass
    s.end_training()
    with s.mutating("LoadPipeline"):
        pass


def test_readers_run_concurrently_and_writers_exclusively():
    s = manager().create()
    inside = threading.Barrier(3, timeout=10)

    def reader() -> None:
        with s.reading():
            inside.wait()  # all three readers must be inside at the same time

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert not inside.broken

    order: list[str] = []
    entered = threading.Event()

    def writer() -> None:
        with s.mutating("w"):
            order.append("writer")

    with s.reading():
        t = threading.Thread(target=lambda: (entered.set(), writer()))
        t.start()
        entered.wait(10)
        time.sleep(0.05)  # give the writer a chance to (wrongly) enter
        order.append("reader-done")
    t.join(10)
    assert order == ["reader-done", "writer"]


def test_close_all_releases_everything():
    m = manager()
    for _ in range(3):
        m.create()
    m.close_all()
    assert m.count == 0
