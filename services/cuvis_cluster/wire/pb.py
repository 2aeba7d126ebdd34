"""Public handle on the generated stubs: ``from cuvis_cluster.wire.pb import pb, pb_grpc``."""

from cuvis_cluster.wire.gen.cuvis_ai.v1 import cuvis_ai_pb2 as pb
from cuvis_cluster.wire.gen.cuvis_ai.v1 import cuvis_ai_pb2_grpc as pb_grpc

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["CuvisAIService"].full_name

__all__ = ["SERVICE_NAME", "pb", "pb_grpc"]
