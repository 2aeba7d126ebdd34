"""The asyncio twin of the SDK, on ``grpc.aio``: the same operations, arguments, results and errors.

:class:`AsyncClient` and :class:`AsyncSession` offer every method of :class:`~cuvis_cluster.client.Client`
and :class:`~cuvis_cluster.client.Session`, as coroutines. Requests and replies are built and read by the
same code (:mod:`cuvis_cluster.client._core`), and :func:`connect` takes the same arguments as the sync
``connect`` (TLS, tokens, 1 GiB messages, the retry service config)::

    from cuvis_cluster.client import aio

    async with aio.connect("127.0.0.1:50050") as client:
        async with await client.create_session() as session:
            await session.configure_trainrun("rx_statistical", ["data.batch_size=2"])
            async for progress in session.train("statistical"):
                ...
            result = await session.infer(cube, wavelengths)

Not coroutines, like their sync counterparts: ``client.session(id)`` (sends nothing) and
``session.train(...)``, which returns an :class:`AsyncTrainStream` to ``async for`` over. Cancelling the
task that awaits a call, or leaving ``async for`` over ``train()``, cancels the RPC.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import grpc

from cuvis_cluster import errors
from cuvis_cluster.client import _core as core
from cuvis_cluster.client._channel import (
    MAX_MESSAGE_SIZE,
    ChannelConfig,
    KeepAliveOptions,
    RetryPolicy,
    build_config,
    create_stubs,
)
from cuvis_cluster.client._client import Client, Session
from cuvis_cluster.client._core import DEFAULT_TIMEOUT, UNSET, Call
from cuvis_cluster.client._errors import from_rpc_error, local_error
from cuvis_cluster.client._inputs import Frames
from cuvis_cluster.client._progress import attached_to_terminal
from cuvis_cluster.client._results import InferenceResult, TrainProgress
from cuvis_cluster.wire.pb import control_pb2, pb

log = logging.getLogger(__name__)

R = TypeVar("R")


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
    options: list[tuple[str, object]] | tuple[()] = (),
) -> AsyncClient:
    """:func:`cuvis_cluster.client.connect` for asyncio: same arguments, returns an :class:`AsyncClient`.

    Call it while the event loop that will use the client is running (``grpc.aio`` channels belong to
    one loop).
    """
    config = build_config(
        address,
        tls=tls,
        root_certificates=root_certificates,
        client_certificate=client_certificate,
        client_key=client_key,
        server_name=server_name,
        token=token,
        max_message_size=max_message_size,
        keepalive=keepalive,
        retry=retry,
        options=options,
    )
    return AsyncClient(config, timeout=timeout)


class AsyncCallHandle:
    """A unary call in flight: ``await result()`` waits for it, ``cancel()`` abandons it."""

    def __init__(self, call: Any, method: str, convert: Callable[[Any], Any]) -> None:
        self._call = call
        self._method = method
        self._convert = convert

    async def result(self, timeout: float | None = None) -> Any:
        """The converted reply; raises the call's domain error, or ``Cancelled`` after :meth:`cancel`.

        ``timeout`` bounds this wait only; the call goes on (cancel it explicitly).
        """
        try:
            reply = await asyncio.wait_for(asyncio.shield(self._reply()), timeout)
        except asyncio.CancelledError:
            if not self._call.cancelled():
                raise  # the awaiting task itself was cancelled
            raise local_error(errors.Cancelled, f"{self._method} was cancelled by the client") from None
        except TimeoutError as exc:
            raise local_error(
                errors.DeadlineExceeded, f"{self._method} did not finish within {timeout} s"
            ) from exc
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(exc, self._method) from exc
        return self._convert(reply)

    async def _reply(self) -> Any:
        return await self._call

    def cancel(self) -> bool:
        """Cancel the call; returns False when it had already finished."""
        return bool(self._call.cancel())

    def done(self) -> bool:
        return bool(self._call.done())


class AsyncTrainStream(TrainProgress):
    """Progress of one Train call, read with ``async for``: :class:`~cuvis_cluster.client.TrainStream`
    for asyncio.

    The call starts with the first read. Same attributes (``last``, ``messages``, ``stopped_early``,
    ``cancelled``, ``status``) and the same end of stream: ``early_stop`` or :meth:`cancel` end iteration
    quietly, a failed call raises its domain error. Leaving the loop and dropping the stream, or
    ``aclose()`` (``contextlib.aclosing``), cancels the run.
    """

    def __init__(
        self,
        start: Callable[[], Any],
        *,
        early_stop: Callable[[pb.TrainResponse], bool] | None,
        progress: bool,
        description: str,
    ) -> None:
        super().__init__(early_stop=early_stop, progress=progress, description=description)
        self._start = start
        self._call: Any = None

    def __aiter__(self) -> AsyncTrainStream:
        return self

    async def __anext__(self) -> pb.TrainResponse:
        if self._done:
            raise StopAsyncIteration
        if self._call is None:
            self._call = self._start()
        try:
            resp = await self._call.read()
        except asyncio.CancelledError:
            if self._done:  # cancel() from elsewhere while this read was waiting
                raise StopAsyncIteration from None
            self._finish()
            self._call.cancel()  # the reading task was cancelled: so is the run
            raise
        except grpc.aio.AioRpcError as exc:
            error = self._failed(exc)
            if error is None:
                raise StopAsyncIteration from None
            raise error from exc
        if resp is grpc.aio.EOF:
            error = self._ended()
            if error is not None:
                raise error
            raise StopAsyncIteration
        if self._received(resp):
            self.cancel()
        return resp

    async def wait(self) -> pb.TrainResponse | None:
        """Consume the rest of the stream and return the last message."""
        async for _ in self:
            pass
        return self.last

    def cancel(self) -> None:
        """Cancel the Train call; the worker stops the run and the session stays usable."""
        if self._cancelling() and self._call is not None:
            self._call.cancel()

    async def aclose(self) -> None:
        """Cancel the run if it is still going (for ``contextlib.aclosing``)."""
        self.cancel()

    async def __aenter__(self) -> AsyncTrainStream:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.cancel()

    def __del__(self) -> None:
        if not getattr(self, "_done", True) and getattr(self, "_call", None) is not None:
            try:
                self.cancel()
            except Exception:
                pass


class AsyncClient:
    """The asyncio client; create it with :func:`connect`, use ``async with`` or ``await client.close()``."""

    def __init__(self, config: ChannelConfig, *, timeout: float | None = DEFAULT_TIMEOUT) -> None:
        self.config = config
        self.address = config.address
        self.default_timeout = timeout
        self.channel = config.create_aio_channel()
        self._stubs = create_stubs(self.channel)
        #: The generated ``CuvisAIService`` stub (``grpc.aio``), for anything the SDK does not wrap.
        self.stub = self._stubs[core.SERVICE]
        self._metadata = config.metadata()

    # plumbing --------------------------------------------------------------------------------------------
    def _send(self, call: Call[Any], timeout: Any) -> Any:
        """Start ``call`` on its stub; the returned ``grpc.aio`` call is awaited or read by the caller."""
        rpc = getattr(self._stubs[call.stub], call.method)
        deadline = core.call_timeout(call.method, timeout, self.default_timeout)
        return rpc(call.request, timeout=deadline, metadata=self._metadata or None)

    async def _run(self, call: Call[R], timeout: Any = UNSET) -> R:
        """Send ``call``, await the reply and decode it."""
        try:
            reply = await self._send(call, timeout)
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(exc, call.method) from exc
        return call.decode(reply)

    # lifecycle -------------------------------------------------------------------------------------------
    async def wait_until_ready(self, timeout: float = 10.0) -> None:
        """Wait until the channel is connected; ``Unavailable`` naming the address after ``timeout`` s."""
        try:
            await asyncio.wait_for(self.channel.channel_ready(), timeout)
        except TimeoutError as exc:
            raise local_error(
                errors.Unavailable,
                f"cannot reach {self.address} within {timeout:g} s; is the cluster up?",
                method="connect",
            ) from exc

    async def close(self) -> None:
        await self.channel.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"AsyncClient({self.address!r}, tls={self.config.tls})"

    # health and cluster status ---------------------------------------------------------------------------
    async def health(self, service: str = "", *, timeout: float | None = 10.0) -> str:
        return await self._run(core.health(service), timeout)

    async def list_workers(self, *, timeout: Any = UNSET) -> list[control_pb2.WorkerStatus]:
        try:
            return await self._run(core.list_workers(), timeout)
        except errors.Unimplemented:
            return await self._run(core.worker_status(), timeout)

    # discovery -------------------------------------------------------------------------------------------
    async def list_pipelines(self, tag: str | None = None, *, timeout: Any = UNSET) -> list[pb.PipelineInfo]:
        return await self._run(core.list_pipelines(tag), timeout)

    async def pipeline_info(self, path: str, *, timeout: Any = UNSET) -> pb.PipelineInfo:
        return await self._run(core.pipeline_info(path), timeout)

    async def parameter_schema(self, config_type: str, *, timeout: Any = UNSET) -> dict[str, Any]:
        return await self._run(core.parameter_schema(config_type), timeout)

    async def validate_config(
        self, config_type: str, config: Mapping[str, Any] | str | bytes, *, timeout: Any = UNSET
    ) -> pb.ValidateConfigResponse:
        return await self._run(core.validate_config(config_type, config), timeout)

    async def training_capabilities(self, *, timeout: Any = UNSET) -> pb.GetTrainingCapabilitiesResponse:
        return await self._run(core.training_capabilities(), timeout)

    async def visualize_config(
        self, config: Mapping[str, Any] | str, format: str = "svg", *, timeout: Any = UNSET
    ) -> bytes:
        return await self._run(core.visualize_config(config, format), timeout)

    async def clear_plugin_cache(self, plugin_name: str = "", *, timeout: Any = UNSET) -> int:
        return await self._run(core.clear_plugin_cache(plugin_name), timeout)

    # sessions --------------------------------------------------------------------------------------------
    async def create_session(self, *, timeout: Any = UNSET) -> AsyncSession:
        return AsyncSession(self, await self._run(core.create_session(), timeout))

    def session(self, session_id: str) -> AsyncSession:
        return AsyncSession(self, session_id)

    async def restore_trainrun(
        self,
        trainrun_path: str,
        *,
        weights_path: str | None = None,
        strict: bool | None = None,
        session_id: str = "",
        timeout: Any = UNSET,
    ) -> AsyncSession:
        call = core.restore_trainrun(trainrun_path, weights_path, strict, session_id)
        restored_id, trainrun = await self._run(call, timeout)
        session = AsyncSession(self, restored_id)
        session.trainrun = trainrun
        return session


class AsyncSession:
    """One server-side session; ``async with`` closes it on exit."""

    def __init__(self, client: AsyncClient, session_id: str) -> None:
        self.client = client
        self.id = session_id
        self.closed = False
        #: The train-run config this session was restored from, if it came from RestoreTrainRun.
        self.trainrun: dict[str, Any] | None = None

    def __repr__(self) -> str:
        return f"AsyncSession({self.id!r}{', closed' if self.closed else ''})"

    async def _run(self, call: Call[R], timeout: Any = UNSET) -> R:
        return await self.client._run(call, timeout)

    # lifecycle -------------------------------------------------------------------------------------------
    async def close(self, *, timeout: Any = UNSET) -> bool:
        if self.closed:
            return False
        try:
            await self._run(core.close_session(self.id), timeout)
        except errors.NotFound:
            pass  # expired, closed elsewhere, or its worker was lost: it is gone either way
        self.closed = True
        return True

    async def __aenter__(self) -> AsyncSession:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, *rest: object) -> None:
        try:
            await self.close()
        except errors.CuvisError as exc:
            if exc_type is None:
                raise
            log.warning("could not close session %s: %s", self.id, exc)

    async def set_search_paths(
        self, paths: Sequence[str], *, append: bool = True, timeout: Any = UNSET
    ) -> pb.SetSessionSearchPathsResponse:
        return await self._run(core.set_search_paths(self.id, paths, append), timeout)

    # configs ---------------------------------------------------------------------------------------------
    async def resolve_config(
        self, config_type: str, path: str, overrides: Iterable[str] = (), *, timeout: Any = UNSET
    ) -> dict[str, Any]:
        return await self._run(core.resolve_config(self.id, config_type, path, overrides), timeout)

    async def resolve_trainrun(
        self, path: str, overrides: Iterable[str] = (), *, timeout: Any = UNSET
    ) -> dict[str, Any]:
        return await self.resolve_config("trainrun", path, overrides, timeout=timeout)

    async def apply_trainrun(
        self, config: Mapping[str, Any] | str | bytes, *, timeout: Any = UNSET
    ) -> pb.SetTrainRunConfigResponse:
        return await self._run(core.apply_trainrun(self.id, config), timeout)

    async def configure_trainrun(
        self, path: str, overrides: Iterable[str] = (), *, timeout: Any = UNSET
    ) -> dict[str, Any]:
        config = await self.resolve_trainrun(path, overrides, timeout=timeout)
        await self.apply_trainrun(config, timeout=timeout)
        return config

    # pipeline --------------------------------------------------------------------------------------------
    async def load_pipeline(
        self,
        source: Mapping[str, Any] | str | Path,
        overrides: Iterable[str] = (),
        *,
        data_module: str = "",
        timeout: Any = UNSET,
    ) -> pb.PipelineMetadata:
        config = core.local_pipeline(source)
        if config is None:
            config = await self.resolve_config("pipeline", str(source), overrides, timeout=timeout)
        return await self._run(core.load_pipeline(self.id, config, data_module), timeout)

    async def load_weights(
        self,
        path: str | None = None,
        *,
        data: bytes | None = None,
        file: str | Path | None = None,
        strict: bool | None = None,
        timeout: Any = UNSET,
    ) -> str:
        return await self._run(core.load_weights(self.id, path, data, file, strict), timeout)

    async def save_pipeline(
        self, path: str, *, metadata: Mapping[str, Any] | None = None, timeout: Any = UNSET
    ) -> pb.SavePipelineResponse:
        return await self._run(core.save_pipeline(self.id, path, metadata), timeout)

    async def save_trainrun(
        self, path: str, *, save_weights: bool = True, timeout: Any = UNSET
    ) -> pb.SaveTrainRunResponse:
        return await self._run(core.save_trainrun(self.id, path, save_weights), timeout)

    async def inputs(self, *, timeout: Any = UNSET) -> dict[str, pb.TensorSpec]:
        return await self._run(core.pipeline_inputs(self.id), timeout)

    async def outputs(self, *, timeout: Any = UNSET) -> dict[str, pb.TensorSpec]:
        return await self._run(core.pipeline_outputs(self.id), timeout)

    async def visualize(self, format: str = "svg", *, timeout: Any = UNSET) -> bytes:
        return await self._run(core.visualize(self.id, format), timeout)

    # training --------------------------------------------------------------------------------------------
    def train(
        self,
        trainer: str | int = "statistical",
        *,
        data: Mapping[str, Any] | None = None,
        training: Mapping[str, Any] | None = None,
        early_stop: Callable[[pb.TrainResponse], bool] | None = None,
        progress: bool | None = None,
        timeout: float | None = None,
    ) -> AsyncTrainStream:
        """:meth:`Session.train <cuvis_cluster.client.Session.train>`: same arguments; returns an
        :class:`AsyncTrainStream`, not a coroutine. The call starts when the stream is first read."""
        call, label = core.train(self.id, trainer, data, training)
        show = attached_to_terminal() if progress is None else progress
        return AsyncTrainStream(
            lambda: self.client._send(call, timeout), early_stop=early_stop, progress=show, description=label
        )

    async def stop_train(self, *, timeout: Any = UNSET) -> pb.StopTrainResponse:
        return await self._run(core.stop_train(self.id), timeout)

    async def train_status(self, *, timeout: Any = UNSET) -> pb.TrainResponse:
        return await self._run(core.train_status(self.id), timeout)

    # inference -------------------------------------------------------------------------------------------
    async def infer(
        self,
        cube: Any = None,
        wavelengths: Any = None,
        *,
        mask: Any = None,
        file: str | Path | None = None,
        output_specs: Iterable[str] = (),
        extra_inputs: Mapping[str, Any] | None = None,
        text_prompt: str = "",
        frame: int = 0,
        timeout: float | None = None,
    ) -> InferenceResult:
        inputs = core.frames(cube, wavelengths, mask, file, frame)
        call = core.inference(self.id, inputs, output_specs, extra_inputs, text_prompt)
        return await self._run(call, timeout)

    async def infer_frames(
        self,
        frames: Frames,
        *,
        output_specs: Iterable[str] = (),
        extra_inputs: Mapping[str, Any] | None = None,
        text_prompt: str = "",
        timeout: float | None = None,
    ) -> InferenceResult:
        call = core.inference(self.id, frames, output_specs, extra_inputs, text_prompt)
        return await self._run(call, timeout)

    async def infer_future(
        self,
        cube: Any = None,
        wavelengths: Any = None,
        *,
        mask: Any = None,
        file: str | Path | None = None,
        output_specs: Iterable[str] = (),
        extra_inputs: Mapping[str, Any] | None = None,
        text_prompt: str = "",
        frame: int = 0,
        timeout: float | None = None,
    ) -> AsyncCallHandle:
        """:meth:`infer` that returns once the call is sent, with an :class:`AsyncCallHandle` on it."""
        inputs = core.frames(cube, wavelengths, mask, file, frame)
        call = core.inference(self.id, inputs, output_specs, extra_inputs, text_prompt)
        return AsyncCallHandle(self.client._send(call, timeout), call.method, call.decode)

    # plugins, nodes, profiling ---------------------------------------------------------------------------
    async def load_plugin(self, manifest: Mapping[str, Any] | str | bytes, *, timeout: Any = UNSET) -> str:
        return await self._run(core.load_plugin(self.id, manifest), timeout)

    async def list_plugins(self, *, timeout: Any = UNSET) -> list[pb.PluginInfo]:
        return await self._run(core.list_plugins(self.id), timeout)

    async def plugin_info(self, name: str, *, timeout: Any = UNSET) -> pb.PluginInfo:
        return await self._run(core.plugin_info(self.id, name), timeout)

    async def list_nodes(self, *, timeout: Any = UNSET) -> list[pb.NodeInfo]:
        return await self._run(core.list_nodes(self.id), timeout)

    async def set_profiling(
        self,
        enabled: bool = True,
        *,
        synchronize_cuda: bool | None = None,
        reset: bool | None = None,
        skip_first_n: int | None = None,
        timeout: Any = UNSET,
    ) -> bool:
        call = core.set_profiling(self.id, enabled, synchronize_cuda, reset, skip_first_n)
        return await self._run(call, timeout)

    async def profiling_summary(
        self, stage: int | None = None, *, timeout: Any = UNSET
    ) -> list[pb.NodeProfilingStats]:
        return await self._run(core.profiling_summary(self.id, stage), timeout)


def _share_docstrings(target: type, source: type) -> None:
    """Give each method of ``target`` without a docstring the one of its sync twin in ``source``."""
    for name, member in vars(target).items():
        twin = getattr(source, name, None)
        if callable(member) and not member.__doc__ and twin is not None and twin.__doc__:
            member.__doc__ = twin.__doc__


_share_docstrings(AsyncClient, Client)
_share_docstrings(AsyncSession, Session)

__all__ = ["AsyncCallHandle", "AsyncClient", "AsyncSession", "AsyncTrainStream", "connect"]
