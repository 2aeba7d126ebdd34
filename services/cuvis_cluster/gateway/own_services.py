"""The gateway's own gRPC services, served by the real libraries on a private loopback port.

``grpc.health.v1`` (grpcio-health-checking), server reflection v1 and v1alpha (grpcio-reflection,
via :mod:`cuvis_cluster.common.serving`) describing ``cuvis_ai.v1``, health and the internal
``ClusterStatusService``, and ``ClusterStatusService`` itself. The HTTP/2 front end forwards these
paths here through the same forwarding code as worker calls, so clients see one server.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2

from cuvis_cluster.common.serving import HEALTH_SERVICE_NAME, OVERALL, GrpcServer
from cuvis_cluster.gateway.registry import Registry
from cuvis_cluster.wire.pb import SERVICE_NAME, control_pb2, control_pb2_grpc

log = logging.getLogger(__name__)

CLUSTER_STATUS_SERVICE = control_pb2.DESCRIPTOR.services_by_name["ClusterStatusService"].full_name
LOCAL_PATHS = (
    f"/{HEALTH_SERVICE_NAME}/".encode(),
    b"/grpc.reflection.v1alpha.ServerReflection/",
    b"/grpc.reflection.v1.ServerReflection/",
    f"/{CLUSTER_STATUS_SERVICE}/".encode(),
)
# Served to anyone: health (probes carry no credentials) and reflection (the public API schema). Every
# other path here, ClusterStatusService with the workers' addresses and instance ids included, needs
# the caller to authenticate whenever the gateway identifies callers.
OPEN_PATHS = (
    f"/{HEALTH_SERVICE_NAME}/".encode(),
    b"/grpc.reflection.v1alpha.ServerReflection/",
    b"/grpc.reflection.v1.ServerReflection/",
)
# Known methods keep their name as a metrics label; anything else under LOCAL_PATHS is "unknown".
LOCAL_METHODS = frozenset(
    {
        f"/{HEALTH_SERVICE_NAME}/Check".encode(),
        f"/{HEALTH_SERVICE_NAME}/Watch".encode(),
        b"/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        b"/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        f"/{CLUSTER_STATUS_SERVICE}/ListWorkers".encode(),
    }
)


@dataclass
class _LocalSettings:
    listen: str = "127.0.0.1:0"
    max_message_bytes: int = 4 << 20
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None


class ClusterStatusServicer(control_pb2_grpc.ClusterStatusServiceServicer):
    """ListWorkers from the registry's last poll. Session ids are never listed: they are per owner."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    def ListWorkers(self, request: Any, context: grpc.ServicerContext) -> Any:
        if not self.registry.redis_up:
            context.abort(grpc.StatusCode.UNAVAILABLE, self.registry.unavailable_message())
        workers = sorted(self.registry.workers, key=lambda w: w.address)
        return control_pb2.ListWorkersResponse(
            workers=[
                control_pb2.WorkerStatus(
                    instance_id=w.instance,
                    address=w.address,
                    version=w.version,
                    device=w.device,
                    device_memory_free_bytes=max(w.device_free, 0),
                    device_memory_total_bytes=max(w.device_total, 0),
                    sessions=max(w.sessions, 0),
                    capacity=max(w.capacity, 0),
                    draining=w.draining,
                    updated_unix_ms=w.updated_ms,
                )
                for w in workers
            ]
        )


class LocalServices:
    def __init__(self, registry: Registry) -> None:
        self.server = GrpcServer(
            _LocalSettings(), reflection_enabled=True, max_workers=4, component="gateway-local"
        )
        servicer = ClusterStatusServicer(registry)
        # CuvisAIService is registered for reflection only; its calls never reach this server.
        self.server.add_service(SERVICE_NAME, lambda s: None)
        self.server.add_service(
            CLUSTER_STATUS_SERVICE,
            lambda s: control_pb2_grpc.add_ClusterStatusServiceServicer_to_server(servicer, s),
        )
        self._serving: bool | None = None

    @property
    def address(self) -> str:
        return self.server.address

    def start(self) -> None:
        self.server.start()
        self.set_serving(False)

    def set_serving(self, serving: bool, *, cluster_status: bool | None = None) -> None:
        """Overall and CuvisAIService health; ClusterStatusService follows Redis alone."""
        ok, bad = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING
        if serving != self._serving:
            self._serving = serving
            for name in (OVERALL, SERVICE_NAME):
                self.server.health.set(name, ok if serving else bad)
        if cluster_status is not None:
            self.server.health.set(CLUSTER_STATUS_SERVICE, ok if cluster_status else bad)

    def shutdown(self) -> None:
        self.server.health.enter_graceful_shutdown()
        self.server.server.stop(0.5)
