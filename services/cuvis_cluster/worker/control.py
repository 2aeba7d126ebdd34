"""``cuvis_cluster.internal.v1.WorkerControlService``: Drain and GetWorkerStatus, served by each worker.

Gateways call GetWorkerStatus to probe a worker that missed its heartbeats; operators (and
``cuvis-cluster``) call Drain to retire a worker without losing its running calls.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import grpc

from cuvis_cluster.wire.pb import control_pb2, control_pb2_grpc
from cuvis_cluster.worker.membership import ClusterMembership

log = logging.getLogger(__name__)


class WorkerControlServicer:
    """``cuvis_cluster.internal.v1.WorkerControlService`` over a :class:`ClusterMembership`.

    Drain puts the worker into draining mode at once; when its sessions are gone or ``grace_seconds``
    have passed, it asks the process to shut down (``shutdown.trigger``), which stops the server
    gracefully and deregisters, as SIGTERM would.
    """

    SERVICE_NAME = "cuvis_cluster.internal.v1.WorkerControlService"

    def __init__(self, membership: ClusterMembership, *, shutdown: Any = None) -> None:
        self.membership = membership
        self.shutdown = shutdown
        self._watch: threading.Thread | None = None
        self._lock = threading.Lock()

    def add_to_server(self, server: grpc.Server) -> None:
        control_pb2_grpc.add_WorkerControlServiceServicer_to_server(self, server)

    def Drain(self, request: Any, context: grpc.ServicerContext) -> Any:
        grace = float(request.grace_seconds) or float(self.membership.settings.grace_seconds)
        self.membership.drain(grace)
        with self._lock:
            if self._watch is None and self.shutdown is not None:
                self._watch = threading.Thread(target=self._finish_drain, name="drain-watch", daemon=True)
                self._watch.start()
        return control_pb2.DrainResponse(accepted=True, sessions=self.membership.sessions.count)

    def _finish_drain(self) -> None:
        deadline = self.membership.drain_deadline or time.monotonic()
        while time.monotonic() < deadline and self.membership.sessions.count > 0:
            time.sleep(0.2)
        log.info("drain finished (%d sessions left); shutting down", self.membership.sessions.count)
        self.shutdown.trigger("drained")

    def GetWorkerStatus(self, request: Any, context: grpc.ServicerContext) -> Any:
        return control_pb2.GetWorkerStatusResponse(status=self.membership.status())
