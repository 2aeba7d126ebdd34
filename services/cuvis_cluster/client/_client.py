"""The synchronous client: :class:`Client` (channel + session-less calls) and :class:`Session`.

Every method sends one RPC, takes a per-call ``timeout`` in seconds (``None`` = no deadline), and raises
:mod:`cuvis_cluster.errors` exceptions (see :mod:`cuvis_cluster.client._errors`). A :class:`Client` is safe
to share between threads; so is a :class:`Session`, within what the server allows concurrently (several
Inference calls at once are fine; a mutating call during training is FAILED_PRECONDITION).

Requests and replies are built and read in :mod:`cuvis_cluster.client._core`, shared with the asyncio
twin :mod:`cuvis_cluster.client.aio`; this module only sends them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import grpc

from cuvis_cluster import errors
from cuvis_cluster.client import _core as core
from cuvis_cluster.client._channel import ChannelConfig, create_stubs
from cuvis_cluster.client._core import DEFAULT_TIMEOUT, UNSET, Call
from cuvis_cluster.client._errors import from_rpc_error, local_error
from cuvis_cluster.client._inputs import Frames
from cuvis_cluster.client._progress import attached_to_terminal
from cuvis_cluster.client._results import InferenceResult, TrainProgress
from cuvis_cluster.wire.pb import control_pb2, pb

log = logging.getLogger(__name__)

R = TypeVar("R")


class CallHandle:
    """A unary call in flight: ``result()`` waits for it, ``cancel()`` abandons it."""

    def __init__(self, future: grpc.Future, method: str, convert: Callable[[Any], Any]) -> None:
        self._future = future
        self._method = method
        self._convert = convert

    def result(self, timeout: float | None = None) -> Any:
        """The converted reply; raises the call's domain error, or ``Cancelled`` after :meth:`cancel`."""
        try:
            return self._convert(self._future.result(timeout=timeout))
        except grpc.FutureCancelledError as exc:
            raise local_error(errors.Cancelled, f"{self._method} was cancelled by the client") from exc
        except grpc.FutureTimeoutError as exc:
            raise local_error(
                errors.DeadlineExceeded, f"{self._method} did not finish within {timeout} s"
            ) from exc
        except grpc.RpcError as exc:
            raise from_rpc_error(exc, self._method) from exc

    def cancel(self) -> bool:
        """Cancel the call; returns False when it had already finished."""
        return self._future.cancel()

    def done(self) -> bool:
        return self._future.done()


class TrainStream(TrainProgress):
    """Progress of one Train call, iterated as :class:`pb.TrainResponse` messages.

    * Iterating yields every message; the stream ends after the terminal one (COMPLETE, ERROR, CANCELLED).
      A failure of the call raises its domain error; ``Unavailable`` when the gateway or worker is lost
      mid-run (Train is never retried: a retry would start a second run).
    * ``early_stop(resp) -> bool``, when given, is asked after each message; True cancels the stream
      (the worker stops within one batch) and iteration ends quietly with that message.
    * ``cancel()`` does the same from anywhere, e.g. another thread; breaking out of a ``for`` loop and
      dropping the stream also cancels it.
    * With a progress bar (a tqdm bar on stderr, by default only when stderr is a terminal).
    """

    def __init__(
        self,
        call: Any,
        *,
        early_stop: Callable[[pb.TrainResponse], bool] | None,
        progress: bool,
        description: str,
    ) -> None:
        super().__init__(early_stop=early_stop, progress=progress, description=description)
        self._call = call

    def __iter__(self) -> Iterator[pb.TrainResponse]:
        return self

    def __next__(self) -> pb.TrainResponse:
        if self._done:
            raise StopIteration
        try:
            resp = next(self._call)
        except StopIteration:
            error = self._ended()
            if error is not None:
                raise error from None
            raise
        except grpc.RpcError as exc:
            error = self._failed(exc)
            if error is None:
                raise StopIteration from None
            raise error from exc
        if self._received(resp):
            self.cancel()
        return resp

    def wait(self) -> pb.TrainResponse | None:
        """Consume the rest of the stream and return the last message."""
        for _ in self:
            pass
        return self.last

    def cancel(self) -> None:
        """Cancel the Train call; the worker stops the run and the session stays usable."""
        if self._cancelling():
            self._call.cancel()

    def __enter__(self) -> TrainStream:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.cancel()

    def __del__(self) -> None:
        if not getattr(self, "_done", True):
            try:
                self.cancel()
            except Exception:
                pass


class Client:
    """A connection to a cuvis-ai-cluster gateway (or a single worker). Create it with :func:`connect`.

    Parameters
    ----------
    config:
        The channel configuration built by :func:`connect`.
    timeout:
        Default deadline in seconds for quick calls (discovery, configs, session bookkeeping); calls in
        :data:`~cuvis_cluster.client._core.LONG_CALLS` have none unless given per call.
    """

    def __init__(self, config: ChannelConfig, *, timeout: float | None = DEFAULT_TIMEOUT) -> None:
        self.config = config
        self.address = config.address
        self.default_timeout = timeout
        self.channel = config.create_channel()
        self._stubs = create_stubs(self.channel)
        #: The generated ``CuvisAIService`` stub, for anything the SDK does not wrap.
        self.stub = self._stubs[core.SERVICE]
        self._metadata = config.metadata()

    # plumbing --------------------------------------------------------------------------------------------
    def _rpc(self, call: Call[Any]) -> Any:
        return getattr(self._stubs[call.stub], call.method)

    def _options(self, call: Call[Any], timeout: Any) -> dict[str, Any]:
        return {
            "timeout": core.call_timeout(call.method, timeout, self.default_timeout),
            "metadata": self._metadata or None,
        }

    def _run(self, call: Call[R], timeout: Any = UNSET) -> R:
        """Send ``call``, wait for the reply and decode it."""
        try:
            reply = self._rpc(call)(call.request, **self._options(call, timeout))
        except grpc.RpcError as exc:
            raise from_rpc_error(exc, call.method) from exc
        return call.decode(reply)

    def _start(self, call: Call[Any], timeout: Any) -> CallHandle:
        """Send ``call`` without waiting for it."""
        future = self._rpc(call).future(call.request, **self._options(call, timeout))
        return CallHandle(future, call.method, call.decode)

    def _stream(self, call: Call[Any], timeout: Any) -> Any:
        """Open a server stream; its replies are read by the caller."""
        return self._rpc(call)(call.request, **self._options(call, timeout))

    # lifecycle -------------------------------------------------------------------------------------------
    def wait_until_ready(self, timeout: float = 10.0) -> None:
        """Block until the channel is connected; ``Unavailable`` naming the address after ``timeout`` s."""
        try:
            grpc.channel_ready_future(self.channel).result(timeout=timeout)
        except grpc.FutureTimeoutError as exc:
            raise local_error(
                errors.Unavailable,
                f"cannot reach {self.address} within {timeout:g} s; is the cluster up?",
                method="connect",
            ) from exc

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Client({self.address!r}, tls={self.config.tls})"

    # health and cluster status ---------------------------------------------------------------------------
    def health(self, service: str = "", *, timeout: float | None = 10.0) -> str:
        """``grpc.health.v1`` status of the server (``"SERVING"``, ``"NOT_SERVING"``...)."""
        return self._run(core.health(service), timeout)

    def list_workers(self, *, timeout: Any = UNSET) -> list[control_pb2.WorkerStatus]:
        """Live workers with their sessions and devices (``ClusterStatusService.ListWorkers`` on a gateway).

        Against a single worker (no gateway) this falls back to its own ``GetWorkerStatus``.
        """
        try:
            return self._run(core.list_workers(), timeout)
        except errors.Unimplemented:
            return self._run(core.worker_status(), timeout)

    # discovery -------------------------------------------------------------------------------------------
    def list_pipelines(self, tag: str | None = None, *, timeout: Any = UNSET) -> list[pb.PipelineInfo]:
        """Pipelines under the server's configs root, optionally only those with ``tag``."""
        return self._run(core.list_pipelines(tag), timeout)

    def pipeline_info(self, path: str, *, timeout: Any = UNSET) -> pb.PipelineInfo:
        """One pipeline, with its YAML text (``path`` as listed by :meth:`list_pipelines`)."""
        return self._run(core.pipeline_info(path), timeout)

    def parameter_schema(self, config_type: str, *, timeout: Any = UNSET) -> dict[str, Any]:
        """The JSON Schema of a config type, as a dict."""
        return self._run(core.parameter_schema(config_type), timeout)

    def validate_config(
        self, config_type: str, config: Mapping[str, Any] | str | bytes, *, timeout: Any = UNSET
    ) -> pb.ValidateConfigResponse:
        """Check a config without applying it; problems come back in ``.errors`` / ``.warnings``."""
        return self._run(core.validate_config(config_type, config), timeout)

    def training_capabilities(self, *, timeout: Any = UNSET) -> pb.GetTrainingCapabilitiesResponse:
        """Optimizers, schedulers and callbacks the trainer supports."""
        return self._run(core.training_capabilities(), timeout)

    def visualize_config(
        self, config: Mapping[str, Any] | str, format: str = "svg", *, timeout: Any = UNSET
    ) -> bytes:
        """Render a pipeline config (dict, or YAML/JSON text) without a session."""
        return self._run(core.visualize_config(config, format), timeout)

    def clear_plugin_cache(self, plugin_name: str = "", *, timeout: Any = UNSET) -> int:
        """Drop cached plugin installations on the serving worker; returns how many were removed."""
        return self._run(core.clear_plugin_cache(plugin_name), timeout)

    # sessions --------------------------------------------------------------------------------------------
    def create_session(self, *, timeout: Any = UNSET) -> Session:
        """Open a session on the least loaded worker. Use it as a context manager to close it on exit."""
        return Session(self, self._run(core.create_session(), timeout))

    def session(self, session_id: str) -> Session:
        """A handle on an existing session id (nothing is sent)."""
        return Session(self, session_id)

    def restore_trainrun(
        self,
        trainrun_path: str,
        *,
        weights_path: str | None = None,
        strict: bool | None = None,
        session_id: str = "",
        timeout: Any = UNSET,
    ) -> Session:
        """Recreate a saved train run (pipeline, configs, optional weights) in a new or given session."""
        call = core.restore_trainrun(trainrun_path, weights_path, strict, session_id)
        restored_id, trainrun = self._run(call, timeout)
        session = Session(self, restored_id)
        session.trainrun = trainrun
        return session


class Session:
    """One server-side session. ``with client.create_session() as s: ...`` closes it on exit."""

    def __init__(self, client: Client, session_id: str) -> None:
        self.client = client
        self.id = session_id
        self.closed = False
        #: The train-run config this session was restored from, if it came from RestoreTrainRun.
        self.trainrun: dict[str, Any] | None = None

    def __repr__(self) -> str:
        return f"Session({self.id!r}{', closed' if self.closed else ''})"

    def _run(self, call: Call[R], timeout: Any = UNSET) -> R:
        return self.client._run(call, timeout)

    # lifecycle -------------------------------------------------------------------------------------------
    def close(self, *, timeout: Any = UNSET) -> bool:
        """Close the session and free what it holds on the worker. Closing twice is harmless here."""
        if self.closed:
            return False
        try:
            self._run(core.close_session(self.id), timeout)
        except errors.NotFound:
            pass  # expired, closed elsewhere, or its worker was lost: it is gone either way
        self.closed = True
        return True

    def __enter__(self) -> Session:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *rest: object) -> None:
        try:
            self.close()
        except errors.CuvisError as exc:
            if exc_type is None:
                raise
            log.warning("could not close session %s: %s", self.id, exc)

    def set_search_paths(
        self, paths: Sequence[str], *, append: bool = True, timeout: Any = UNSET
    ) -> pb.SetSessionSearchPathsResponse:
        """Add (or with ``append=False`` replace) server-side config directories; see ``rejected_paths``."""
        return self._run(core.set_search_paths(self.id, paths, append), timeout)

    # configs ---------------------------------------------------------------------------------------------
    def resolve_config(
        self, config_type: str, path: str, overrides: Iterable[str] = (), *, timeout: Any = UNSET
    ) -> dict[str, Any]:
        """Compose a server-side config with Hydra, apply ``key=value`` overrides, return it as a dict.

        ``path`` may omit the group: ``resolve_config("trainrun", "rx_statistical")`` resolves
        ``trainrun/rx_statistical``.
        """
        return self._run(core.resolve_config(self.id, config_type, path, overrides), timeout)

    def resolve_trainrun(
        self, path: str, overrides: Iterable[str] = (), *, timeout: Any = UNSET
    ) -> dict[str, Any]:
        """:meth:`resolve_config` for a train run."""
        return self.resolve_config("trainrun", path, overrides, timeout=timeout)

    def apply_trainrun(
        self, config: Mapping[str, Any] | str | bytes, *, timeout: Any = UNSET
    ) -> pb.SetTrainRunConfigResponse:
        """Store a train-run config in the session (SetTrainRunConfig); a pipeline in it is built too."""
        return self._run(core.apply_trainrun(self.id, config), timeout)

    def configure_trainrun(
        self, path: str, overrides: Iterable[str] = (), *, timeout: Any = UNSET
    ) -> dict[str, Any]:
        """Resolve a train run with overrides and apply it; returns the resolved config."""
        config = self.resolve_trainrun(path, overrides, timeout=timeout)
        self.apply_trainrun(config, timeout=timeout)
        return config

    # pipeline --------------------------------------------------------------------------------------------
    def load_pipeline(
        self,
        source: Mapping[str, Any] | str | Path,
        overrides: Iterable[str] = (),
        *,
        data_module: str = "",
        timeout: Any = UNSET,
    ) -> pb.PipelineMetadata:
        """Make a pipeline the session's pipeline (weights are not loaded; see :meth:`load_weights`).

        ``source`` is a config dict, a local ``.yaml``/``.json`` file, or the name of a server-side config
        (``"rx_statistical"`` or ``"pipeline/rx_statistical"``) that is resolved with ``overrides`` first.
        """
        config = core.local_pipeline(source)
        if config is None:
            config = self.resolve_config("pipeline", str(source), overrides, timeout=timeout)
        return self._run(core.load_pipeline(self.id, config, data_module), timeout)

    def load_weights(
        self,
        path: str | None = None,
        *,
        data: bytes | None = None,
        file: str | Path | None = None,
        strict: bool | None = None,
        timeout: Any = UNSET,
    ) -> str:
        """Load weights from a server-side ``path``, from ``data`` bytes, or from a local ``file`` (uploaded).

        Returns the server path that was read ('' for uploaded bytes).
        """
        return self._run(core.load_weights(self.id, path, data, file, strict), timeout)

    def save_pipeline(
        self, path: str, *, metadata: Mapping[str, Any] | None = None, timeout: Any = UNSET
    ) -> pb.SavePipelineResponse:
        """Write the pipeline YAML and its ``.pt`` weights under the server's output root."""
        return self._run(core.save_pipeline(self.id, path, metadata), timeout)

    def save_trainrun(
        self, path: str, *, save_weights: bool = True, timeout: Any = UNSET
    ) -> pb.SaveTrainRunResponse:
        """Write the train-run YAML, its pipeline and (by default) the weights under the output root."""
        return self._run(core.save_trainrun(self.id, path, save_weights), timeout)

    def inputs(self, *, timeout: Any = UNSET) -> dict[str, pb.TensorSpec]:
        """The pipeline's inputs by batch key."""
        return self._run(core.pipeline_inputs(self.id), timeout)

    def outputs(self, *, timeout: Any = UNSET) -> dict[str, pb.TensorSpec]:
        """The pipeline's outputs by ``node.port``."""
        return self._run(core.pipeline_outputs(self.id), timeout)

    def visualize(self, format: str = "svg", *, timeout: Any = UNSET) -> bytes:
        """The session's pipeline graph rendered as png, svg, dot or mermaid."""
        return self._run(core.visualize(self.id, format), timeout)

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
    ) -> TrainStream:
        """Start training and return the progress stream (iterate it, or call ``.wait()``).

        Parameters
        ----------
        trainer:
            ``"statistical"``, ``"gradient"``, ``"calibration"`` or a ``pb.TRAINER_TYPE_*`` value.
        data, training:
            Override the data / training parts of the session's train-run config for this run.
        early_stop:
            Called with each message; returning True cancels the run cleanly.
        progress:
            Draw a tqdm bar on stderr; default: only when stderr is a terminal.
        timeout:
            Deadline for the whole run in seconds (default none).
        """
        call, label = core.train(self.id, trainer, data, training)
        stream = self.client._stream(call, timeout)
        show = attached_to_terminal() if progress is None else progress
        return TrainStream(stream, early_stop=early_stop, progress=show, description=label)

    def stop_train(self, *, timeout: Any = UNSET) -> pb.StopTrainResponse:
        """Ask the running training to stop; its stream then ends with CANCELLED."""
        return self._run(core.stop_train(self.id), timeout)

    def train_status(self, *, timeout: Any = UNSET) -> pb.TrainResponse:
        """The latest real progress of the current or last run (status UNSPECIFIED if never trained)."""
        return self._run(core.train_status(self.id), timeout)

    # inference -------------------------------------------------------------------------------------------
    def infer(
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
        """Run the pipeline on one batch and return its outputs as numpy arrays.

        Parameters
        ----------
        cube:
            HWC or BHWC array (any supported dtype, e.g. uint16 counts); or give ``file`` instead.
        wavelengths:
            Band centres in nm, ``[C]`` or ``[B, C]``.
        mask:
            Optional label mask, ``[H, W]`` or ``[B, H, W]``.
        file:
            A ``.npz`` (``cube``, optional ``wavelengths``, ``mask``, ``rgb_image``, other keys as extra
            inputs) or a ``.cu3s`` session file (measurement ``frame``; needs Cubert's cuvis SDK).
        output_specs:
            Outputs to return, by ``node.port`` or port name; empty returns all.
        timeout:
            Deadline in seconds (default none).
        """
        inputs = core.frames(cube, wavelengths, mask, file, frame)
        call = core.inference(self.id, inputs, output_specs, extra_inputs, text_prompt)
        return self._run(call, timeout)

    def infer_frames(
        self,
        frames: Frames,
        *,
        output_specs: Iterable[str] = (),
        extra_inputs: Mapping[str, Any] | None = None,
        text_prompt: str = "",
        timeout: float | None = None,
    ) -> InferenceResult:
        """:meth:`infer` for inputs already read with :func:`~cuvis_cluster.client.read_inputs`."""
        return self._run(core.inference(self.id, frames, output_specs, extra_inputs, text_prompt), timeout)

    def infer_future(
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
    ) -> CallHandle:
        """Like :meth:`infer`, but returns at once with a handle to ``result()`` or ``cancel()`` the call."""
        inputs = core.frames(cube, wavelengths, mask, file, frame)
        call = core.inference(self.id, inputs, output_specs, extra_inputs, text_prompt)
        return self.client._start(call, timeout)

    # plugins, nodes, profiling ---------------------------------------------------------------------------
    def load_plugin(self, manifest: Mapping[str, Any] | str | bytes, *, timeout: Any = UNSET) -> str:
        """Register a plugin manifest in this session; returns the registered name."""
        return self._run(core.load_plugin(self.id, manifest), timeout)

    def list_plugins(self, *, timeout: Any = UNSET) -> list[pb.PluginInfo]:
        """Plugins registered in this session."""
        return self._run(core.list_plugins(self.id), timeout)

    def plugin_info(self, name: str, *, timeout: Any = UNSET) -> pb.PluginInfo:
        """One registered plugin."""
        return self._run(core.plugin_info(self.id, name), timeout)

    def list_nodes(self, *, timeout: Any = UNSET) -> list[pb.NodeInfo]:
        """Node types this session can use (built-in plus its plugins')."""
        return self._run(core.list_nodes(self.id), timeout)

    def set_profiling(
        self,
        enabled: bool = True,
        *,
        synchronize_cuda: bool | None = None,
        reset: bool | None = None,
        skip_first_n: int | None = None,
        timeout: Any = UNSET,
    ) -> bool:
        """Switch per-node profiling on or off; returns whether it is on."""
        call = core.set_profiling(self.id, enabled, synchronize_cuda, reset, skip_first_n)
        return self._run(call, timeout)

    def profiling_summary(
        self, stage: int | None = None, *, timeout: Any = UNSET
    ) -> list[pb.NodeProfilingStats]:
        """Per-node timing statistics, optionally of one ``pb.EXECUTION_STAGE_*`` only."""
        return self._run(core.profiling_summary(self.id, stage), timeout)
