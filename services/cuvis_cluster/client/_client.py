"""The synchronous client: :class:`Client` (channel + session-less calls) and :class:`Session`.

Every method sends one RPC, takes a per-call ``timeout`` in seconds (``None`` = no deadline), and raises
:mod:`cuvis_cluster.errors` exceptions (see :mod:`cuvis_cluster.client._errors`). A :class:`Client` is safe
to share between threads; so is a :class:`Session`, within what the server allows concurrently (several
Inference calls at once are fine; a mutating call during training is FAILED_PRECONDITION).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import grpc
import numpy as np
import yaml

from cuvis_cluster import errors
from cuvis_cluster.client._channel import ChannelConfig
from cuvis_cluster.client._errors import ServerError, from_rpc_error, local_error
from cuvis_cluster.client._inputs import Frames, from_arrays, read_file
from cuvis_cluster.client._progress import TERMINAL_STATUSES, ProgressBar, attached_to_terminal, status_name
from cuvis_cluster.wire import fastwire
from cuvis_cluster.wire.pb import control_pb2, control_pb2_grpc, pb, pb_grpc

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Default deadline, in seconds, of calls that are quick by nature (discovery, configs, session bookkeeping).
DEFAULT_TIMEOUT = 60.0

#: Calls whose run time grows with the data or the model; they get no default deadline.
LONG_CALLS = frozenset(
    {
        "Train",
        "Inference",
        "LoadPipeline",
        "LoadPipelineWeights",
        "SavePipeline",
        "SaveTrainRun",
        "RestoreTrainRun",
        "SetTrainRunConfig",
    }
)

TRAINERS = {
    "statistical": pb.TRAINER_TYPE_STATISTICAL,
    "gradient": pb.TRAINER_TYPE_GRADIENT,
    "calibration": pb.TRAINER_TYPE_CALIBRATION,
}

CONFIG_TYPES = ("pipeline", "trainrun", "data", "training")

_UNSET: Any = object()

#: The full gRPC name of the Inference method.
INFERENCE_METHOD = "/{}/Inference".format(pb.DESCRIPTOR.services_by_name["CuvisAIService"].full_name)


class _InferenceStub:
    """``Inference`` on pre-serialized request bytes, with the reply decoded zero-copy.

    The request goes out as built by :mod:`cuvis_cluster.wire.fastwire` (one copy of each array instead
    of protobuf's three) and the reply's tensors stay views on the bytes grpc received (protobuf would
    copy them twice). Same method, same wire bytes, so servers and the gateway cannot tell the difference.
    """

    def __init__(self, channel: Any) -> None:
        self.Inference = channel.unary_unary(
            INFERENCE_METHOD,
            request_serializer=_serialize_request,
            response_deserializer=fastwire.parse_inference_response,
        )


def _serialize_request(request: bytes | pb.InferenceRequest) -> bytes:
    return request if isinstance(request, bytes) else request.SerializeToString()


def config_path(config_type: str, path: str) -> str:
    """``("trainrun", "rx_statistical")`` -> ``"trainrun/rx_statistical"``; prefixed paths stay as is."""
    path = str(path).strip()
    if path.startswith("/") or path.startswith(f"{config_type}/"):
        return path
    return f"{config_type}/{path}"


def check_overrides(overrides: Iterable[str]) -> list[str]:
    result = []
    for item in overrides:
        key, sep, _ = str(item).partition("=")
        if not sep or not key.strip():
            raise local_error(
                errors.InvalidArgument, f"override {item!r} must look like key.path=value", field="overrides"
            )
        result.append(str(item))
    return result


def config_bytes(config: Mapping[str, Any] | str | bytes) -> bytes:
    """A config as UTF-8 JSON bytes (dicts are serialised; str/bytes are sent as they are)."""
    if isinstance(config, bytes):
        return config
    if isinstance(config, str):
        return config.encode()
    return json.dumps(config).encode()


def read_config_file(path: Path) -> dict[str, Any]:
    """A local pipeline/train-run config (YAML or JSON) as a dict."""
    try:
        loaded = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise local_error(errors.InvalidArgument, f"cannot read {path}: {exc}", field="config") from exc
    if not isinstance(loaded, dict):
        raise local_error(errors.InvalidArgument, f"{path} does not hold a mapping", field="config")
    return loaded


# -----------------------------------------------------------------------------------------------------------
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


class TrainStream:
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
        self._call = call
        self._early_stop = early_stop
        self._want_bar = progress
        self._description = description
        self._bar: ProgressBar | None = None
        self._done = False
        self._cancelled = False
        self._terminal = False
        self.last: pb.TrainResponse | None = None
        self.messages = 0
        self.stopped_early = False

    # iteration ------------------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[pb.TrainResponse]:
        return self

    def __next__(self) -> pb.TrainResponse:
        if self._done:
            raise StopIteration
        try:
            resp = next(self._call)
        except StopIteration:
            self._finish()
            if self.last is not None and self.last.status == pb.TRAIN_STATUS_ERROR:
                raise local_error(ServerError, f"training failed: {self.last.message}") from None
            raise
        except grpc.RpcError as exc:
            self._finish()
            if self._cancelled and exc.code() is grpc.StatusCode.CANCELLED:
                raise StopIteration from None
            raise from_rpc_error(exc, "Train") from exc
        self.last = resp
        self.messages += 1
        if self._want_bar:
            if self._bar is None:
                self._bar = ProgressBar(self._description)
            self._bar.update(resp)
        if resp.status in TERMINAL_STATUSES:
            # Keep reading: the call's own status follows (e.g. INVALID_ARGUMENT after an ERROR message).
            self._terminal = True
        elif self._early_stop is not None and self._early_stop(resp):
            self.stopped_early = True
            self.cancel()
        return resp

    def wait(self) -> pb.TrainResponse | None:
        """Consume the rest of the stream and return the last message."""
        for _ in self:
            pass
        return self.last

    # control ---------------------------------------------------------------------------------------------
    def cancel(self) -> None:
        """Cancel the Train call; the worker stops the run and the session stays usable."""
        if self._done:
            return
        if not self._terminal:  # after the terminal message there is no run left to stop
            self._cancelled = True
        self._call.cancel()
        self._finish()

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    @property
    def status(self) -> str:
        """Status name of the last message (``"COMPLETE"``...) or ``"CANCELLED"`` after a client cancel."""
        if self._cancelled:
            return "CANCELLED"
        return status_name(self.last.status) if self.last is not None else "UNSPECIFIED"

    def _finish(self) -> None:
        self._done = True
        if self._bar is not None:
            self._bar.close()
            self._bar = None

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


class InferenceResult(Mapping[str, np.ndarray]):
    """Outputs of one Inference call: a mapping ``"node.port" -> numpy array`` plus scalar ``metrics``."""

    def __init__(self, resp: pb.InferenceResponse | fastwire.FastInferenceResponse) -> None:
        # Read-only numpy views on the reply's bytes, no copies.
        outputs, metrics = fastwire.response_arrays(resp)
        self.outputs: dict[str, np.ndarray] = outputs
        self.metrics: dict[str, float] = metrics

    def __getitem__(self, name: str) -> np.ndarray:
        return self.outputs[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.outputs)

    def __len__(self) -> int:
        return len(self.outputs)

    def find(self, port: str) -> tuple[str, np.ndarray] | None:
        """The first output whose port is ``port`` (``"scores"`` matches ``"rx.scores"``)."""
        for name, array in self.outputs.items():
            if name == port or name.rsplit(".", 1)[-1] == port:
                return name, array
        return None

    def scores(self) -> tuple[str, np.ndarray] | None:
        """The anomaly score map: a ``*.scores`` output, else any output named like a score."""
        found = self.find("scores")
        if found is None:
            found = next(((n, a) for n, a in self.outputs.items() if "score" in n.rsplit(".", 1)[-1]), None)
        return found

    def decisions(self) -> tuple[str, np.ndarray] | None:
        """The per-pixel decisions: a ``*.decisions`` output, if the pipeline has one."""
        return self.find("decisions")

    def __repr__(self) -> str:
        shapes = ", ".join(f"{k}: {v.dtype}{list(v.shape)}" for k, v in self.outputs.items())
        return f"InferenceResult({shapes}; metrics={self.metrics})"


# -----------------------------------------------------------------------------------------------------------
class Client:
    """A connection to a cuvis-ai-cluster gateway (or a single worker). Create it with :func:`connect`.

    Parameters
    ----------
    config:
        The channel configuration built by :func:`connect`.
    timeout:
        Default deadline in seconds for quick calls (discovery, configs, session bookkeeping); calls in
        :data:`LONG_CALLS` have none unless given per call.
    """

    def __init__(self, config: ChannelConfig, *, timeout: float | None = DEFAULT_TIMEOUT) -> None:
        self.config = config
        self.address = config.address
        self.default_timeout = timeout
        self.channel = config.create_channel()
        self.stub = pb_grpc.CuvisAIServiceStub(self.channel)
        self._cluster_stub = control_pb2_grpc.ClusterStatusServiceStub(self.channel)
        self._worker_stub = control_pb2_grpc.WorkerControlServiceStub(self.channel)
        self._inference_stub = _InferenceStub(self.channel)
        self._metadata = config.metadata()

    # plumbing --------------------------------------------------------------------------------------------
    def _timeout(self, method: str, timeout: Any) -> float | None:
        if timeout is not _UNSET:
            return timeout
        return None if method in LONG_CALLS else self.default_timeout

    def _call(self, method: str, request: Any, timeout: Any = _UNSET, *, stub: Any = None) -> Any:
        rpc = getattr(stub or self.stub, method)
        try:
            return rpc(request, timeout=self._timeout(method, timeout), metadata=self._metadata or None)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc, method) from exc

    def _future(
        self, method: str, request: Any, timeout: Any, convert: Callable[[Any], T], *, stub: Any = None
    ) -> CallHandle:
        rpc = getattr(stub or self.stub, method)
        future = rpc.future(request, timeout=self._timeout(method, timeout), metadata=self._metadata or None)
        return CallHandle(future, method, convert)

    def _stream(self, method: str, request: Any, timeout: Any = _UNSET) -> Any:
        rpc = getattr(self.stub, method)
        return rpc(request, timeout=self._timeout(method, timeout), metadata=self._metadata or None)

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
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        stub = health_pb2_grpc.HealthStub(self.channel)
        resp = self._call("Check", health_pb2.HealthCheckRequest(service=service), timeout, stub=stub)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)

    def list_workers(self, *, timeout: Any = _UNSET) -> list[control_pb2.WorkerStatus]:
        """Live workers with their sessions and devices (``ClusterStatusService.ListWorkers`` on a gateway).

        Against a single worker (no gateway) this falls back to its own ``GetWorkerStatus``.
        """
        try:
            resp = self._call(
                "ListWorkers", control_pb2.ListWorkersRequest(), timeout, stub=self._cluster_stub
            )
            return list(resp.workers)
        except errors.Unimplemented:
            resp = self._call(
                "GetWorkerStatus", control_pb2.GetWorkerStatusRequest(), timeout, stub=self._worker_stub
            )
            return [resp.status]

    # discovery -------------------------------------------------------------------------------------------
    def list_pipelines(self, tag: str | None = None, *, timeout: Any = _UNSET) -> list[pb.PipelineInfo]:
        """Pipelines under the server's configs root, optionally only those with ``tag``."""
        request = pb.ListAvailablePipelinesRequest()
        if tag:
            request.filter_tag = tag
        return list(self._call("ListAvailablePipelines", request, timeout).pipelines)

    def pipeline_info(self, path: str, *, timeout: Any = _UNSET) -> pb.PipelineInfo:
        """One pipeline, with its YAML text (``path`` as listed by :meth:`list_pipelines`)."""
        request = pb.GetPipelineInfoRequest(pipeline_path=path)
        return self._call("GetPipelineInfo", request, timeout).pipeline_info

    def parameter_schema(self, config_type: str, *, timeout: Any = _UNSET) -> dict[str, Any]:
        """The JSON Schema of a config type, as a dict."""
        resp = self._call(
            "GetParameterSchema", pb.GetParameterSchemaRequest(config_type=config_type), timeout
        )
        return json.loads(resp.json_schema)

    def validate_config(
        self, config_type: str, config: Mapping[str, Any] | str | bytes, *, timeout: Any = _UNSET
    ) -> pb.ValidateConfigResponse:
        """Check a config without applying it; problems come back in ``.errors`` / ``.warnings``."""
        request = pb.ValidateConfigRequest(config_type=config_type, config_bytes=config_bytes(config))
        return self._call("ValidateConfig", request, timeout)

    def training_capabilities(self, *, timeout: Any = _UNSET) -> pb.GetTrainingCapabilitiesResponse:
        """Optimizers, schedulers and callbacks the trainer supports."""
        return self._call("GetTrainingCapabilities", pb.GetTrainingCapabilitiesRequest(), timeout)

    def visualize_config(
        self, config: Mapping[str, Any] | str, format: str = "svg", *, timeout: Any = _UNSET
    ) -> bytes:
        """Render a pipeline config (dict, or YAML/JSON text) without a session."""
        content = config if isinstance(config, str) else json.dumps(config)
        request = pb.GetPipelineVisualizationRequest(format=format, config_content=content)
        return self._call("GetPipelineVisualization", request, timeout).image_data

    def clear_plugin_cache(self, plugin_name: str = "", *, timeout: Any = _UNSET) -> int:
        """Drop cached plugin installations on the serving worker; returns how many were removed."""
        request = pb.ClearPluginCacheRequest(plugin_name=plugin_name)
        return self._call("ClearPluginCache", request, timeout).cleared_count

    # sessions --------------------------------------------------------------------------------------------
    def create_session(self, *, timeout: Any = _UNSET) -> Session:
        """Open a session on the least loaded worker. Use it as a context manager to close it on exit."""
        resp = self._call("CreateSession", pb.CreateSessionRequest(), timeout)
        return Session(self, resp.session_id)

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
        timeout: Any = _UNSET,
    ) -> Session:
        """Recreate a saved train run (pipeline, configs, optional weights) in a new or given session."""
        request = pb.RestoreTrainRunRequest(trainrun_path=trainrun_path, session_id=session_id)
        if weights_path is not None:
            request.weights_path = weights_path
        if strict is not None:
            request.strict = strict
        resp = self._call("RestoreTrainRun", request, timeout)
        session = Session(self, resp.session_id)
        session.trainrun = json.loads(resp.trainrun.config_bytes) if resp.trainrun.config_bytes else None
        return session


# -----------------------------------------------------------------------------------------------------------
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

    def _call(self, method: str, request: Any, timeout: Any = _UNSET) -> Any:
        return self.client._call(method, request, timeout)

    # lifecycle -------------------------------------------------------------------------------------------
    def close(self, *, timeout: Any = _UNSET) -> bool:
        """Close the session and free what it holds on the worker. Closing twice is harmless here."""
        if self.closed:
            return False
        try:
            self._call("CloseSession", pb.CloseSessionRequest(session_id=self.id), timeout)
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
        self, paths: Sequence[str], *, append: bool = True, timeout: Any = _UNSET
    ) -> pb.SetSessionSearchPathsResponse:
        """Add (or with ``append=False`` replace) server-side config directories; see ``rejected_paths``."""
        request = pb.SetSessionSearchPathsRequest(session_id=self.id, search_paths=list(paths), append=append)
        return self._call("SetSessionSearchPaths", request, timeout)

    # configs ---------------------------------------------------------------------------------------------
    def resolve_config(
        self, config_type: str, path: str, overrides: Iterable[str] = (), *, timeout: Any = _UNSET
    ) -> dict[str, Any]:
        """Compose a server-side config with Hydra, apply ``key=value`` overrides, return it as a dict.

        ``path`` may omit the group: ``resolve_config("trainrun", "rx_statistical")`` resolves
        ``trainrun/rx_statistical``.
        """
        request = pb.ResolveConfigRequest(
            session_id=self.id,
            config_type=config_type,
            path=config_path(config_type, path),
            overrides=check_overrides(overrides),
        )
        return json.loads(self._call("ResolveConfig", request, timeout).config_bytes)

    def resolve_trainrun(
        self, path: str, overrides: Iterable[str] = (), *, timeout: Any = _UNSET
    ) -> dict[str, Any]:
        """:meth:`resolve_config` for a train run."""
        return self.resolve_config("trainrun", path, overrides, timeout=timeout)

    def apply_trainrun(
        self, config: Mapping[str, Any] | str | bytes, *, timeout: Any = _UNSET
    ) -> pb.SetTrainRunConfigResponse:
        """Store a train-run config in the session (SetTrainRunConfig); a pipeline in it is built too."""
        request = pb.SetTrainRunConfigRequest(
            session_id=self.id, config=pb.TrainRunConfig(config_bytes=config_bytes(config))
        )
        return self._call("SetTrainRunConfig", request, timeout)

    def configure_trainrun(
        self, path: str, overrides: Iterable[str] = (), *, timeout: Any = _UNSET
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
        timeout: Any = _UNSET,
    ) -> pb.PipelineMetadata:
        """Make a pipeline the session's pipeline (weights are not loaded; see :meth:`load_weights`).

        ``source`` is a config dict, a local ``.yaml``/``.json`` file, or the name of a server-side config
        (``"rx_statistical"`` or ``"pipeline/rx_statistical"``) that is resolved with ``overrides`` first.
        """
        if isinstance(source, Mapping):
            config: Mapping[str, Any] = source
        else:
            local = Path(source).expanduser()
            if local.suffix.lower() in (".yaml", ".yml", ".json") and local.is_file():
                config = read_config_file(local)
            else:
                config = self.resolve_config("pipeline", str(source), overrides, timeout=timeout)
        request = pb.LoadPipelineRequest(
            session_id=self.id,
            pipeline=pb.PipelineConfig(config_bytes=config_bytes(config)),
            data_module=data_module,
        )
        return self._call("LoadPipeline", request, timeout).metadata

    def load_weights(
        self,
        path: str | None = None,
        *,
        data: bytes | None = None,
        file: str | Path | None = None,
        strict: bool | None = None,
        timeout: Any = _UNSET,
    ) -> str:
        """Load weights from a server-side ``path``, from ``data`` bytes, or from a local ``file`` (uploaded).

        Returns the server path that was read ('' for uploaded bytes).
        """
        if file is not None:
            try:
                data = Path(file).expanduser().read_bytes()
            except OSError as exc:
                raise local_error(
                    errors.NotFound, f"cannot read weights file {file}: {exc}", field="file"
                ) from exc
        if (path is None) == (data is None):
            raise local_error(
                errors.InvalidArgument, "give exactly one of path, data or file", field="weights_source"
            )
        request = pb.LoadPipelineWeightsRequest(session_id=self.id)
        if path is not None:
            request.weights_path = path
        else:
            request.weights_bytes = data
        if strict is not None:
            request.strict = strict
        return self._call("LoadPipelineWeights", request, timeout).resolved_path

    def save_pipeline(
        self, path: str, *, metadata: Mapping[str, Any] | None = None, timeout: Any = _UNSET
    ) -> pb.SavePipelineResponse:
        """Write the pipeline YAML and its ``.pt`` weights under the server's output root."""
        request = pb.SavePipelineRequest(session_id=self.id, pipeline_path=path)
        if metadata is not None:
            request.metadata.CopyFrom(pb.PipelineMetadata(**metadata))
        return self._call("SavePipeline", request, timeout)

    def save_trainrun(
        self, path: str, *, save_weights: bool = True, timeout: Any = _UNSET
    ) -> pb.SaveTrainRunResponse:
        """Write the train-run YAML, its pipeline and (by default) the weights under the output root."""
        request = pb.SaveTrainRunRequest(session_id=self.id, trainrun_path=path, save_weights=save_weights)
        return self._call("SaveTrainRun", request, timeout)

    def inputs(self, *, timeout: Any = _UNSET) -> dict[str, pb.TensorSpec]:
        """The pipeline's inputs by batch key."""
        resp = self._call("GetPipelineInputs", pb.GetPipelineInputsRequest(session_id=self.id), timeout)
        return dict(resp.input_specs)

    def outputs(self, *, timeout: Any = _UNSET) -> dict[str, pb.TensorSpec]:
        """The pipeline's outputs by ``node.port``."""
        resp = self._call("GetPipelineOutputs", pb.GetPipelineOutputsRequest(session_id=self.id), timeout)
        return dict(resp.output_specs)

    def visualize(self, format: str = "svg", *, timeout: Any = _UNSET) -> bytes:
        """The session's pipeline graph rendered as png, svg, dot or mermaid."""
        request = pb.GetPipelineVisualizationRequest(session_id=self.id, format=format)
        return self._call("GetPipelineVisualization", request, timeout).image_data

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
        if isinstance(trainer, str):
            try:
                trainer_type = TRAINERS[trainer.lower()]
            except KeyError:
                raise local_error(
                    errors.InvalidArgument,
                    f"unknown trainer {trainer!r}; use one of {', '.join(TRAINERS)}",
                    field="trainer_type",
                ) from None
            label = trainer.lower()
        else:
            trainer_type = int(trainer)
            label = pb.TrainerType.Name(trainer_type).removeprefix("TRAINER_TYPE_").lower()
        request = pb.TrainRequest(session_id=self.id, trainer_type=trainer_type)
        if data is not None:
            request.data.CopyFrom(pb.DataConfig(config_bytes=config_bytes(data)))
        if training is not None:
            request.training.CopyFrom(pb.TrainingConfig(config_bytes=config_bytes(training)))
        call = self.client._stream("Train", request, timeout)
        show = attached_to_terminal() if progress is None else progress
        return TrainStream(call, early_stop=early_stop, progress=show, description=label)

    def stop_train(self, *, timeout: Any = _UNSET) -> pb.StopTrainResponse:
        """Ask the running training to stop; its stream then ends with CANCELLED."""
        return self._call("StopTrain", pb.StopTrainRequest(session_id=self.id), timeout)

    def train_status(self, *, timeout: Any = _UNSET) -> pb.TrainResponse:
        """The latest real progress of the current or last run (status UNSPECIFIED if never trained)."""
        resp = self._call("GetTrainStatus", pb.GetTrainStatusRequest(session_id=self.id), timeout)
        return resp.latest_progress

    # inference -------------------------------------------------------------------------------------------
    def _frames(self, cube: Any, wavelengths: Any, mask: Any, file: str | Path | None, frame: int) -> Frames:
        if (cube is None) == (file is None):
            raise local_error(errors.InvalidArgument, "give either cube (numpy) or file", field="inputs")
        if file is None:
            return from_arrays(cube, wavelengths, mask)
        frames = read_file(file, frame=frame)
        if wavelengths is not None:
            frames.wavelengths = np.asarray(wavelengths)
        return frames

    def _request(
        self,
        frames: Frames,
        output_specs: Iterable[str],
        extra_inputs: Mapping[str, Any] | None,
        text_prompt: str,
    ) -> bytes:
        return frames.encode_request(
            self.id, list(output_specs), text_prompt=text_prompt, extra_inputs=extra_inputs
        )

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
        frames = self._frames(cube, wavelengths, mask, file, frame)
        return self.infer_frames(
            frames,
            output_specs=output_specs,
            extra_inputs=extra_inputs,
            text_prompt=text_prompt,
            timeout=timeout,
        )

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
        request = self._request(frames, output_specs, extra_inputs, text_prompt)
        return InferenceResult(
            self.client._call("Inference", request, timeout, stub=self.client._inference_stub)
        )

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
        frames = self._frames(cube, wavelengths, mask, file, frame)
        request = self._request(frames, output_specs, extra_inputs, text_prompt)
        return self.client._future(
            "Inference", request, timeout, InferenceResult, stub=self.client._inference_stub
        )

    # plugins, nodes, profiling ---------------------------------------------------------------------------
    def load_plugin(self, manifest: Mapping[str, Any] | str | bytes, *, timeout: Any = _UNSET) -> str:
        """Register a plugin manifest in this session; returns the registered name."""
        request = pb.LoadPluginRequest(
            session_id=self.id, manifest=pb.PluginManifest(config_bytes=config_bytes(manifest))
        )
        resp = self._call("LoadPlugin", request, timeout)
        if resp.error:
            raise local_error(
                errors.InvalidArgument, f"plugin not registered: {resp.error}", field="manifest"
            )
        return resp.registered_plugin

    def list_plugins(self, *, timeout: Any = _UNSET) -> list[pb.PluginInfo]:
        resp = self._call("ListLoadedPlugins", pb.ListLoadedPluginsRequest(session_id=self.id), timeout)
        return list(resp.plugins)

    def plugin_info(self, name: str, *, timeout: Any = _UNSET) -> pb.PluginInfo:
        request = pb.GetPluginInfoRequest(session_id=self.id, plugin_name=name)
        return self._call("GetPluginInfo", request, timeout).plugin

    def list_nodes(self, *, timeout: Any = _UNSET) -> list[pb.NodeInfo]:
        """Node types this session can use (built-in plus its plugins')."""
        resp = self._call("ListAvailableNodes", pb.ListAvailableNodesRequest(session_id=self.id), timeout)
        return list(resp.nodes)

    def set_profiling(
        self,
        enabled: bool = True,
        *,
        synchronize_cuda: bool | None = None,
        reset: bool | None = None,
        skip_first_n: int | None = None,
        timeout: Any = _UNSET,
    ) -> bool:
        request = pb.SetProfilingRequest(session_id=self.id, enabled=enabled)
        for name, value in (
            ("synchronize_cuda", synchronize_cuda),
            ("reset", reset),
            ("skip_first_n", skip_first_n),
        ):
            if value is not None:
                setattr(request, name, value)
        return self._call("SetProfiling", request, timeout).profiling_enabled

    def profiling_summary(
        self, stage: int | None = None, *, timeout: Any = _UNSET
    ) -> list[pb.NodeProfilingStats]:
        request = pb.GetProfilingSummaryRequest(session_id=self.id)
        if stage is not None:
            request.stage = stage
        return list(self._call("GetProfilingSummary", request, timeout).node_stats)
