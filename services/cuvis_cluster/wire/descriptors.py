"""Serve our .proto comments through gRPC server reflection.

Generated ``*_pb2.py`` modules carry descriptors without source info, and the upb runtime drops source info
in ``FileDescriptor.CopyToProto`` anyway, so plain ``grpcio-reflection`` answers ``grpcurl describe`` with
bare signatures. :func:`documented_pool` wraps a descriptor pool so that the files generated from
``proto/`` are copied out of the ``FileDescriptorSet`` that ``python -m cuvis_cluster.wire.codegen`` stores
in ``gen/_descriptor_set.py`` (built with ``--include_source_info``), comments included. Anything else
(health, reflection's own protos) is served as before.

Usage in a server bootstrap::

    from cuvis_cluster.wire.descriptors import enable_documented_reflection
    enable_documented_reflection(server, [SERVICE_NAME, health.SERVICE_NAME])
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import cache
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.descriptor import FileDescriptor

from cuvis_cluster.wire import pb as _pb  # noqa: F401  (registers the generated files in the default pool)
from cuvis_cluster.wire.gen._descriptor_set import FILE_DESCRIPTOR_SET


@cache
def file_descriptor_set() -> descriptor_pb2.FileDescriptorSet:
    """Every file generated from proto/, with comments (``source_code_info``)."""
    return descriptor_pb2.FileDescriptorSet.FromString(FILE_DESCRIPTOR_SET)


def _without_docs(proto: descriptor_pb2.FileDescriptorProto) -> descriptor_pb2.FileDescriptorProto:
    """``proto`` minus what protoc adds only to descriptor sets (source info, json names)."""
    bare = descriptor_pb2.FileDescriptorProto()
    bare.CopyFrom(proto)
    bare.ClearField("source_code_info")

    def strip(messages: Iterable[descriptor_pb2.DescriptorProto]) -> None:
        for message in messages:
            for field in message.field:
                field.ClearField("json_name")
            strip(message.nested_type)

    strip(bare.message_type)
    return bare


class _DocumentedFile:
    """A FileDescriptor whose ``CopyToProto`` includes the comments."""

    def __init__(
        self, real: FileDescriptor, documented: descriptor_pb2.FileDescriptorProto, pool: DocumentedPool
    ):
        self._real = real
        self._documented = documented
        self._pool = pool

    @property
    def name(self) -> str:
        return self._real.name

    @property
    def dependencies(self) -> list[Any]:
        return [self._pool.wrap(dep) for dep in self._real.dependencies]

    def CopyToProto(self, proto: descriptor_pb2.FileDescriptorProto) -> None:
        proto.CopyFrom(self._documented)

    def __getattr__(self, item: str) -> Any:
        return getattr(self._real, item)


class DocumentedPool:
    """A descriptor pool view for ``grpc_reflection``: same lookups, documented file descriptors."""

    def __init__(self, pool: descriptor_pool.DescriptorPool | None = None):
        self._pool = pool if pool is not None else descriptor_pool.Default()
        self._docs = {f.name: f for f in file_descriptor_set().file}
        self._usable: dict[str, bool] = {}

    def wrap(self, file: FileDescriptor) -> Any:
        documented = self._docs.get(file.name)
        if documented is None:
            return file
        if file.name not in self._usable:
            # Only serve the documented copy when it describes exactly what the server runs.
            real = descriptor_pb2.FileDescriptorProto()
            file.CopyToProto(real)
            self._usable[file.name] = _without_docs(real) == _without_docs(documented)
        return _DocumentedFile(file, documented, self) if self._usable[file.name] else file

    def FindFileByName(self, name: str) -> Any:
        return self.wrap(self._pool.FindFileByName(name))

    def FindFileContainingSymbol(self, symbol: str) -> Any:
        try:
            return self.wrap(self._pool.FindFileContainingSymbol(symbol))
        except KeyError:
            # The upb pool does not index methods, so `grpcurl describe pkg.Service.Method` would fail.
            service_name, _, method = symbol.rpartition(".")
            try:
                service = self._pool.FindServiceByName(service_name)
            except KeyError:
                raise KeyError(symbol) from None
            if method not in service.methods_by_name:
                raise KeyError(symbol) from None
            return self.wrap(service.file)

    def __getattr__(self, item: str) -> Any:
        return getattr(self._pool, item)


def documented_pool(pool: descriptor_pool.DescriptorPool | None = None) -> DocumentedPool:
    """A pool to pass as ``pool=`` to ``grpc_reflection...enable_server_reflection``."""
    return DocumentedPool(pool)


def enable_documented_reflection(server: Any, service_names: Iterable[str]) -> None:
    """Register server reflection (v1alpha, what grpcio-reflection provides) with documented descriptors.

    ``service_names`` should include ``grpc_reflection``'s own service name; it is added when missing.
    Works for ``grpc.server`` and ``grpc.aio.server``.
    """
    # Imported on use: only the servers call this; the client (apidoc) imports this module too and
    # need not load grpc_reflection.
    from grpc_reflection.v1alpha import reflection

    names = list(dict.fromkeys([*service_names, reflection.SERVICE_NAME]))
    reflection.enable_server_reflection(names, server, pool=documented_pool())


__all__ = ["DocumentedPool", "documented_pool", "enable_documented_reflection", "file_descriptor_set"]
