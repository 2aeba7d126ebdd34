"""The one import point for generated protobuf/gRPC modules.

Public API (``cuvis_ai.v1``)::

    from cuvis_cluster.wire.pb import pb, pb_grpc, SERVICE_NAME

Internal control plane (``cuvis_cluster.internal.v1``, see proto/cuvis_cluster/internal/v1/control.proto)::

    from cuvis_cluster.wire.pb import control_pb2, control_pb2_grpc
    control_pb2_grpc.add_WorkerControlServiceServicer_to_server(servicer, server)   # workers
    control_pb2_grpc.add_ClusterStatusServiceServicer_to_server(servicer, server)   # gateways

The modules under ``cuvis_cluster.wire.gen`` are produced by ``python -m cuvis_cluster.wire.codegen``;
never edit them by hand.
"""

from cuvis_cluster.wire.gen.cuvis_ai.v1 import cuvis_ai_pb2 as pb
from cuvis_cluster.wire.gen.cuvis_ai.v1 import cuvis_ai_pb2_grpc as pb_grpc
from cuvis_cluster.wire.gen.cuvis_cluster.internal.v1 import control_pb2, control_pb2_grpc

#: ``cuvis_ai.v1.CuvisAIService``: the public service.
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["CuvisAIService"].full_name
#: ``cuvis_cluster.internal.v1.WorkerControlService``: served by workers (Drain, GetWorkerStatus).
WORKER_CONTROL_SERVICE_NAME = control_pb2.DESCRIPTOR.services_by_name["WorkerControlService"].full_name
#: ``cuvis_cluster.internal.v1.ClusterStatusService``: served by gateways (ListWorkers).
CLUSTER_STATUS_SERVICE_NAME = control_pb2.DESCRIPTOR.services_by_name["ClusterStatusService"].full_name

__all__ = [
    "CLUSTER_STATUS_SERVICE_NAME",
    "SERVICE_NAME",
    "WORKER_CONTROL_SERVICE_NAME",
    "control_pb2",
    "control_pb2_grpc",
    "pb",
    "pb_grpc",
]
