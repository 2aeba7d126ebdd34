"""A thin asyncio twin of the SDK for the common calls, on ``grpc.aio``.

Same channel configuration (TLS, tokens, 1 GiB messages, the retry service config) and the same errors as
the sync client::

    from cuvis_cluster.client import aio

    async with aio.connect("127.0.0.1:50050") as client:
        async with await client.create_session() as session:
            await session.configure_trainrun("rx_statistical", ["data.batch_size=2"])
            async for progress in session.train("statistical"):
                ...
            result = await session.infer(cube, wavelengths)

Cancelling the task that awaits a call, or breaking out of ``async for`` over ``train()``, cancels the RPC.
Everything not here is reachable through ``client.stub`` (a ``grpc.aio`` stub).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import grpc

from cuvis_cluster import errors
from cuvis_cluster.client._channel import (
    MAX_MESSAGE_SIZE,
    ChannelConfig,
    KeepAliveOptions,
    RetryPolicy,
    build_config,
)
from cuvis_cluster.client._client import (
    DEFAULT_TIMEOUT,
    LONG_CALLS,
    TRAINERS,
    InferenceResult,
    _InferenceStub,
    check_overrides,
    config_bytes,
    config_path,
    read_config_file,
)
from cuvis_cluster.client._errors import from_rpc_error, local_error
from cuvis_cluster.client._inputs import from_arrays, read_file
from cuvis_cluster.client._progress import TERMINAL_STATUSES
from cuvis_cluster.wire.pb import control_pb2, control_pb2_grpc, pb, pb_grpc

_UNSET: Any = object()


def connect(
    address: str | None = None,
    *,
    tls: bool | None = None,
    root_certificates: bytes | str | Path | None = None,
    client_certificate: bytes | str | Path | None = None,
    client_key: bytes | str | Path | None = None,
    server_name: str | None = None,
    token: str | None = None,
    max_message_size: int = MAX_MESSAGE_SIZE,
    keepalive: KeepAliveOptions | None = None,
    retry: RetryPolicy | bool = True,
    timeout: float | None = DEFAULT_TIMEOUT,
) -> AsyncClient:
    """Like :func:`cuvis_cluster.client.connect`, returning an :class:`AsyncClient` (create it in a loop)."""
    from cuvis_cluster.client import default_address

    config = build_config(
        address or default_address(),
        tls=tls,
        root_certificates=root_certificates,
        client_certificate=client_certificate,
        client_key=client_key,
        server_name=server_name,
        token=token,
        max_message_size=max_message_size,
        keepalive=keepalive,
        retry=retry,
    )
    return AsyncClient(config, timeout=timeout)


def _aio_channel(config: ChannelConfig) -> grpc.aio.Channel:
    options = config.options()
    if not config.tls:
        return grpc.aio.insecure_channel(config.address, options=options)
    credentials = grpc.ssl_channel_credentials(
        config.root_certificates, config.client_key, config.client_certificate
    )
    if config.token:
        credentials = grpc.composite_channel_credentials(
            credentials, grpc.access_token_call_credentials(config.token)
        )
    return grpc.aio.secure_channel(config.address, credentials, options=options)


class AsyncClient:
    """The asyncio client; use ``async with`` or ``await client.close()``."""

    def __init__(self, config: ChannelConfig, *, timeout: float | None = DEFAULT_TIMEOUT) -> None:
        self.config = config
        self.address = config.address
        self.default_timeout = timeout
        self.channel = _aio_channel(config)
        self.stub = pb_grpc.CuvisAIServiceStub(self.channel)
        self._cluster_stub = control_pb2_grpc.ClusterStatusServiceStub(self.channel)
        self._inference_stub = _InferenceStub(self.channel)  # one-copy request, zero-copy reply
        self._metadata = config.metadata() or None

    def _timeout(self, method: str, timeout: Any) -> float | None:
        if timeout is not _UNSET:
            return timeout
        return None if method in LONG_CALLS else self.default_timeout

    async def _call(self, method: str, request: Any, timeout: Any = _UNSET, *, stub: Any = None) -> Any:
        rpc = getattr(stub or self.stub, method)
        try:
            return await rpc(request, timeout=self._timeout(method, timeout), metadata=self._metadata)
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(exc, method) from exc

    async def close(self) -> None:
        await self.channel.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def health(self, service: str = "", *, timeout: float | None = 10.0) -> str:
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        stub = health_pb2_grpc.HealthStub(self.channel)
        resp = await self._call("Check", health_pb2.HealthCheckRequest(service=service), timeout, stub=stub)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)

    async def list_workers(self, *, timeout: Any = _UNSET) -> list[control_pb2.WorkerStatus]:
        request = control_pb2.ListWorkersRequest()
        return list((await self._call("ListWorkers", request, timeout, stub=self._cluster_stub)).workers)

    async def list_pipelines(self, tag: str | None = None, *, timeout: Any = _UNSET) -> list[pb.PipelineInfo]:
        request = pb.ListAvailablePipelinesRequest()
        if tag:
            request.filter_tag = tag
        return list((await self._call("ListAvailablePipelines", request, timeout)).pipelines)

    async def create_session(self, *, timeout: Any = _UNSET) -> AsyncSession:
        resp = await self._call("CreateSession", pb.CreateSessionRequest(), timeout)
        return AsyncSession(self, resp.session_id)

    def session(self, session_id: str) -> AsyncSession:
        return AsyncSession(self, session_id)

    async def restore_trainrun(
        self, trainrun_path: str, *, weights_path: str | None = None, strict: bool | None = None
    ) -> AsyncSession:
        request = pb.RestoreTrainRunRequest(trainrun_path=trainrun_path)
        if weights_path is not None:
            request.weights_path = weights_path
        if strict is not None:
            request.strict = strict
        resp = await self._call("RestoreTrainRun", request)
        return AsyncSession(self, resp.session_id)


class AsyncSession:
    """One session; ``async with`` closes it on exit."""

    def __init__(self, client: AsyncClient, session_id: str) -> None:
        self.client = client
        self.id = session_id
        self.closed = False

    async def __aenter__(self) -> AsyncSession:
        return self

    async def __aexit__(self, exc_type: object, *rest: object) -> None:
        try:
            await self.close()
        except errors.CuvisError:
            if exc_type is None:
                raise

    async def close(self) -> bool:
        if self.closed:
            return False
        try:
            await self.client._call("CloseSession", pb.CloseSessionRequest(session_id=self.id))
        except errors.NotFound:
            pass
        self.closed = True
        return True

    async def resolve_config(
        self, config_type: str, path: str, overrides: Iterable[str] = ()
    ) -> dict[str, Any]:
        request = pb.ResolveConfigRequest(
            session_id=self.id,
            config_type=config_type,
            path=config_path(config_type, path),
            overrides=check_overrides(overrides),
        )
        return json.loads((await self.client._call("ResolveConfig", request)).config_bytes)

    async def apply_trainrun(self, config: Mapping[str, Any] | str | bytes) -> pb.SetTrainRunConfigResponse:
        request = pb.SetTrainRunConfigRequest(
            session_id=self.id, config=pb.TrainRunConfig(config_bytes=config_bytes(config))
        )
        return await self.client._call("SetTrainRunConfig", request)

    async def configure_trainrun(self, path: str, overrides: Iterable[str] = ()) -> dict[str, Any]:
        config = await self.resolve_config("trainrun", path, overrides)
        await self.apply_trainrun(config)
        return config

    async def load_pipeline(
        self, source: Mapping[str, Any] | str | Path, overrides: Iterable[str] = ()
    ) -> Any:
        if isinstance(source, Mapping):
            config: Mapping[str, Any] = source
        elif Path(source).suffix.lower() in (".yaml", ".yml", ".json") and Path(source).is_file():
            config = read_config_file(Path(source))
        else:
            config = await self.resolve_config("pipeline", str(source), overrides)
        request = pb.LoadPipelineRequest(
            session_id=self.id, pipeline=pb.PipelineConfig(config_bytes=config_bytes(config))
        )
        return (await self.client._call("LoadPipeline", request)).metadata

    async def load_weights(self, path: str, *, strict: bool | None = None) -> str:
        request = pb.LoadPipelineWeightsRequest(session_id=self.id, weights_path=path)
        if strict is not None:
            request.strict = strict
        return (await self.client._call("LoadPipelineWeights", request)).resolved_path

    async def train_status(self) -> pb.TrainResponse:
        request = pb.GetTrainStatusRequest(session_id=self.id)
        return (await self.client._call("GetTrainStatus", request)).latest_progress

    async def train(
        self,
        trainer: str = "statistical",
        *,
        early_stop: Callable[[pb.TrainResponse], bool] | None = None,
        timeout: float | None = None,
    ) -> AsyncIterator[pb.TrainResponse]:
        """Progress messages; ``early_stop(resp)`` returning True (or leaving the loop) cancels the run."""
        try:
            trainer_type = TRAINERS[trainer.lower()]
        except KeyError:
            raise local_error(
                errors.InvalidArgument, f"unknown trainer {trainer!r}", field="trainer_type"
            ) from None
        request = pb.TrainRequest(session_id=self.id, trainer_type=trainer_type)
        call = self.client.stub.Train(request, timeout=timeout, metadata=self.client._metadata)
        try:
            async for resp in call:
                yield resp
                if resp.status not in TERMINAL_STATUSES and early_stop is not None and early_stop(resp):
                    return
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(exc, "Train") from exc
        finally:
            call.cancel()  # a no-op once the stream has ended

    async def infer(
        self, cube: Any = None, wavelengths: Any = None, *, file: str | Path | None = None, output_specs=()
    ) -> InferenceResult:
        frames = read_file(file) if file is not None else from_arrays(cube, wavelengths)
        request = frames.encode_request(self.id, list(output_specs))
        return InferenceResult(
            await self.client._call("Inference", request, stub=self.client._inference_stub)
        )

    async def save_pipeline(self, path: str) -> pb.SavePipelineResponse:
        return await self.client._call(
            "SavePipeline", pb.SavePipelineRequest(session_id=self.id, pipeline_path=path)
        )

    async def save_trainrun(self, path: str, *, save_weights: bool = True) -> pb.SaveTrainRunResponse:
        request = pb.SaveTrainRunRequest(session_id=self.id, trainrun_path=path, save_weights=save_weights)
        return await self.client._call("SaveTrainRun", request)


__all__ = ["AsyncClient", "AsyncSession", "connect"]
