"""Every SDK operation as a request to send and a reply decoder, with no network I/O.

This is the one place where requests are built and replies are read, shared by the synchronous
:class:`~cuvis_cluster.client.Client` and the asyncio :class:`~cuvis_cluster.client.aio.AsyncClient`.
Each operation is a function returning a :class:`Call`: which stub and method to use, the request, and
how to turn the reply into what the user gets. The two clients only send a :class:`Call` (blocking or
awaiting) and hand the reply to ``call.decode``; argument checks and local files are handled here too, so
both surfaces accept and refuse exactly the same inputs.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar, cast

import numpy as np
import yaml

from cuvis_cluster import errors
from cuvis_cluster.client._errors import local_error
from cuvis_cluster.client._inputs import Frames, from_arrays, read_file
from cuvis_cluster.client._results import InferenceResult
from cuvis_cluster.wire.pb import control_pb2, pb

R = TypeVar("R")

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

#: Default of every ``timeout=`` argument that means "the client's default for this method".
UNSET: Any = object()

# Which stub of a client a Call goes through (see cuvis_cluster.client._channel.Stubs).
SERVICE, CLUSTER, WORKER, HEALTH, INFERENCE = "service", "cluster", "worker", "health", "inference"


@dataclass(frozen=True)
class Call(Generic[R]):
    """One RPC to send: ``stub.method(request)``, whose reply ``decode`` turns into the result."""

    method: str
    request: Any
    decode: Callable[[Any], R]
    stub: str = SERVICE


def call_timeout(method: str, timeout: Any, default: float | None) -> float | None:
    """The deadline of one call: ``timeout`` when given, else none for long calls, else ``default``."""
    if timeout is not UNSET:
        return timeout
    return None if method in LONG_CALLS else default


# -- argument helpers ---------------------------------------------------------------------------------------
def config_path(config_type: str, path: str) -> str:
    """``("trainrun", "rx_statistical")`` -> ``"trainrun/rx_statistical"``; prefixed paths stay as is."""
    path = str(path).strip()
    if path.startswith("/") or path.startswith(f"{config_type}/"):
        return path
    return f"{config_type}/{path}"


def check_overrides(overrides: Iterable[str]) -> list[str]:
    """The overrides as a list; any item that is not ``key.path=value`` is refused before a call."""
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


def local_pipeline(source: Mapping[str, Any] | str | Path) -> Mapping[str, Any] | None:
    """The pipeline config of ``load_pipeline(source)`` when the client has it (a dict or a local
    ``.yaml``/``.json`` file); ``None`` when ``source`` names a server-side config to resolve first."""
    if isinstance(source, Mapping):
        return source
    local = Path(source).expanduser()
    if local.suffix.lower() in (".yaml", ".yml", ".json") and local.is_file():
        return read_config_file(local)
    return None


def trainer_type(trainer: str | int) -> tuple[int, str]:
    """A trainer name or ``pb.TRAINER_TYPE_*`` value as (enum value, lower-case label)."""
    value: int
    if isinstance(trainer, str):
        try:
            value = TRAINERS[trainer.lower()]
        except KeyError:
            raise local_error(
                errors.InvalidArgument,
                f"unknown trainer {trainer!r}; use one of {', '.join(TRAINERS)}",
                field="trainer_type",
            ) from None
        return value, trainer.lower()
    value = int(trainer)
    return value, pb.TrainerType.Name(value).removeprefix("TRAINER_TYPE_").lower()


def frames(cube: Any, wavelengths: Any, mask: Any, file: str | Path | None, frame: int) -> Frames:
    """The inputs of ``infer``: numpy arrays, or the contents of a ``.npz``/``.cu3s`` file."""
    if (cube is None) == (file is None):
        raise local_error(errors.InvalidArgument, "give either cube (numpy) or file", field="inputs")
    if file is None:
        return from_arrays(cube, wavelengths, mask)
    found = read_file(file, frame=frame)
    if wavelengths is not None:
        found.wavelengths = np.asarray(wavelengths)
    return found


# -- health, cluster status, discovery ----------------------------------------------------------------------
def health(service: str) -> Call[str]:
    from grpc_health.v1 import health_pb2

    def decode(resp: Any) -> str:
        return health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)

    return Call("Check", health_pb2.HealthCheckRequest(service=service), decode, HEALTH)


def list_workers() -> Call[list[control_pb2.WorkerStatus]]:
    return Call("ListWorkers", control_pb2.ListWorkersRequest(), lambda r: list(r.workers), CLUSTER)


def worker_status() -> Call[list[control_pb2.WorkerStatus]]:
    """What ``list_workers`` falls back to against a single worker (no ClusterStatusService)."""
    return Call("GetWorkerStatus", control_pb2.GetWorkerStatusRequest(), lambda r: [r.status], WORKER)


def list_pipelines(tag: str | None) -> Call[list[pb.PipelineInfo]]:
    request = pb.ListAvailablePipelinesRequest()
    if tag:
        request.filter_tag = tag
    return Call("ListAvailablePipelines", request, lambda r: list(r.pipelines))


def pipeline_info(path: str) -> Call[pb.PipelineInfo]:
    request = pb.GetPipelineInfoRequest(pipeline_path=path)
    return Call("GetPipelineInfo", request, lambda r: r.pipeline_info)


def parameter_schema(config_type: str) -> Call[dict[str, Any]]:
    request = pb.GetParameterSchemaRequest(config_type=config_type)
    return Call("GetParameterSchema", request, lambda r: json.loads(r.json_schema))


def validate_config(
    config_type: str, config: Mapping[str, Any] | str | bytes
) -> Call[pb.ValidateConfigResponse]:
    request = pb.ValidateConfigRequest(config_type=config_type, config_bytes=config_bytes(config))
    return Call("ValidateConfig", request, _same)


def training_capabilities() -> Call[pb.GetTrainingCapabilitiesResponse]:
    return Call("GetTrainingCapabilities", pb.GetTrainingCapabilitiesRequest(), _same)


def visualize_config(config: Mapping[str, Any] | str, format: str) -> Call[bytes]:
    content = config if isinstance(config, str) else json.dumps(config)
    request = pb.GetPipelineVisualizationRequest(format=format, config_content=content)
    return Call("GetPipelineVisualization", request, lambda r: r.image_data)


def clear_plugin_cache(plugin_name: str) -> Call[int]:
    request = pb.ClearPluginCacheRequest(plugin_name=plugin_name)
    return Call("ClearPluginCache", request, lambda r: r.cleared_count)


# -- sessions and configs -----------------------------------------------------------------------------------
def create_session() -> Call[str]:
    """Decodes to the new session id."""
    return Call("CreateSession", pb.CreateSessionRequest(), lambda r: r.session_id)


def restore_trainrun(
    trainrun_path: str, weights_path: str | None, strict: bool | None, session_id: str
) -> Call[tuple[str, dict[str, Any] | None]]:
    """Decodes to (session id, the restored train-run config or None)."""
    request = pb.RestoreTrainRunRequest(trainrun_path=trainrun_path, session_id=session_id)
    if weights_path is not None:
        request.weights_path = weights_path
    if strict is not None:
        request.strict = strict

    def decode(resp: Any) -> tuple[str, dict[str, Any] | None]:
        config = json.loads(resp.trainrun.config_bytes) if resp.trainrun.config_bytes else None
        return resp.session_id, config

    return Call("RestoreTrainRun", request, decode)


def close_session(session_id: str) -> Call[None]:
    return Call("CloseSession", pb.CloseSessionRequest(session_id=session_id), _nothing)


def set_search_paths(
    session_id: str, paths: Sequence[str], append: bool
) -> Call[pb.SetSessionSearchPathsResponse]:
    request = pb.SetSessionSearchPathsRequest(session_id=session_id, search_paths=list(paths), append=append)
    return Call("SetSessionSearchPaths", request, _same)


def resolve_config(
    session_id: str, config_type: str, path: str, overrides: Iterable[str]
) -> Call[dict[str, Any]]:
    request = pb.ResolveConfigRequest(
        session_id=session_id,
        config_type=config_type,
        path=config_path(config_type, path),
        overrides=check_overrides(overrides),
    )
    return Call("ResolveConfig", request, lambda r: json.loads(r.config_bytes))


def apply_trainrun(
    session_id: str, config: Mapping[str, Any] | str | bytes
) -> Call[pb.SetTrainRunConfigResponse]:
    request = pb.SetTrainRunConfigRequest(
        session_id=session_id, config=pb.TrainRunConfig(config_bytes=config_bytes(config))
    )
    return Call("SetTrainRunConfig", request, _same)


# -- pipeline -----------------------------------------------------------------------------------------------
def load_pipeline(session_id: str, config: Mapping[str, Any], data_module: str) -> Call[pb.PipelineMetadata]:
    request = pb.LoadPipelineRequest(
        session_id=session_id,
        pipeline=pb.PipelineConfig(config_bytes=config_bytes(config)),
        data_module=data_module,
    )
    return Call("LoadPipeline", request, lambda r: r.metadata)


def load_weights(
    session_id: str, path: str | None, data: bytes | None, file: str | Path | None, strict: bool | None
) -> Call[str]:
    """Weights from a server ``path``, ``data`` bytes or a local ``file``; decodes to the path read."""
    if file is not None:
        try:
            data = Path(file).expanduser().read_bytes()
        except OSError as exc:
            raise local_error(
                errors.NotFound, f"cannot read weights file {file}: {exc}", field="file"
            ) from exc
    request = pb.LoadPipelineWeightsRequest(session_id=session_id)
    if path is not None and data is None:
        request.weights_path = path
    elif data is not None and path is None:
        request.weights_bytes = data
    else:
        raise local_error(
            errors.InvalidArgument, "give exactly one of path, data or file", field="weights_source"
        )
    if strict is not None:
        request.strict = strict
    return Call("LoadPipelineWeights", request, lambda r: r.resolved_path)


def save_pipeline(
    session_id: str, path: str, metadata: Mapping[str, Any] | None
) -> Call[pb.SavePipelineResponse]:
    request = pb.SavePipelineRequest(session_id=session_id, pipeline_path=path)
    if metadata is not None:
        request.metadata.CopyFrom(pb.PipelineMetadata(**metadata))
    return Call("SavePipeline", request, _same)


def save_trainrun(session_id: str, path: str, save_weights: bool) -> Call[pb.SaveTrainRunResponse]:
    request = pb.SaveTrainRunRequest(session_id=session_id, trainrun_path=path, save_weights=save_weights)
    return Call("SaveTrainRun", request, _same)


def pipeline_inputs(session_id: str) -> Call[dict[str, pb.TensorSpec]]:
    request = pb.GetPipelineInputsRequest(session_id=session_id)
    return Call("GetPipelineInputs", request, lambda r: dict(r.input_specs))


def pipeline_outputs(session_id: str) -> Call[dict[str, pb.TensorSpec]]:
    request = pb.GetPipelineOutputsRequest(session_id=session_id)
    return Call("GetPipelineOutputs", request, lambda r: dict(r.output_specs))


def visualize(session_id: str, format: str) -> Call[bytes]:
    request = pb.GetPipelineVisualizationRequest(session_id=session_id, format=format)
    return Call("GetPipelineVisualization", request, lambda r: r.image_data)


# -- training and inference ---------------------------------------------------------------------------------
def train(
    session_id: str, trainer: str | int, data: Mapping[str, Any] | None, training: Mapping[str, Any] | None
) -> tuple[Call[pb.TrainResponse], str]:
    """The Train stream (each reply is one progress message) and the label of its progress bar."""
    value, label = trainer_type(trainer)
    request = pb.TrainRequest(session_id=session_id, trainer_type=cast(pb.TrainerType, value))
    if data is not None:
        request.data.CopyFrom(pb.DataConfig(config_bytes=config_bytes(data)))
    if training is not None:
        request.training.CopyFrom(pb.TrainingConfig(config_bytes=config_bytes(training)))
    return Call("Train", request, _same), label


def stop_train(session_id: str) -> Call[pb.StopTrainResponse]:
    return Call("StopTrain", pb.StopTrainRequest(session_id=session_id), _same)


def train_status(session_id: str) -> Call[pb.TrainResponse]:
    request = pb.GetTrainStatusRequest(session_id=session_id)
    return Call("GetTrainStatus", request, lambda r: r.latest_progress)


def inference(
    session_id: str,
    inputs: Frames,
    output_specs: Iterable[str],
    extra_inputs: Mapping[str, Any] | None,
    text_prompt: str,
) -> Call[InferenceResult]:
    """Inference through the zero-copy stub: the request goes as bytes, the reply as numpy views."""
    request = inputs.encode_request(
        session_id, list(output_specs), text_prompt=text_prompt, extra_inputs=extra_inputs
    )
    return Call("Inference", request, InferenceResult, INFERENCE)


# -- plugins, nodes, profiling ------------------------------------------------------------------------------
def load_plugin(session_id: str, manifest: Mapping[str, Any] | str | bytes) -> Call[str]:
    """Decodes to the registered name; a refusal in the reply's ``error`` raises InvalidArgument."""
    request = pb.LoadPluginRequest(
        session_id=session_id, manifest=pb.PluginManifest(config_bytes=config_bytes(manifest))
    )

    def decode(resp: Any) -> str:
        if resp.error:
            raise local_error(
                errors.InvalidArgument, f"plugin not registered: {resp.error}", field="manifest"
            )
        return resp.registered_plugin

    return Call("LoadPlugin", request, decode)


def list_plugins(session_id: str) -> Call[list[pb.PluginInfo]]:
    request = pb.ListLoadedPluginsRequest(session_id=session_id)
    return Call("ListLoadedPlugins", request, lambda r: list(r.plugins))


def plugin_info(session_id: str, name: str) -> Call[pb.PluginInfo]:
    request = pb.GetPluginInfoRequest(session_id=session_id, plugin_name=name)
    return Call("GetPluginInfo", request, lambda r: r.plugin)


def list_nodes(session_id: str) -> Call[list[pb.NodeInfo]]:
    request = pb.ListAvailableNodesRequest(session_id=session_id)
    return Call("ListAvailableNodes", request, lambda r: list(r.nodes))


def set_profiling(
    session_id: str,
    enabled: bool,
    synchronize_cuda: bool | None,
    reset: bool | None,
    skip_first_n: int | None,
) -> Call[bool]:
    request = pb.SetProfilingRequest(session_id=session_id, enabled=enabled)
    if synchronize_cuda is not None:
        request.synchronize_cuda = synchronize_cuda
    if reset is not None:
        request.reset = reset
    if skip_first_n is not None:
        request.skip_first_n = skip_first_n
    return Call("SetProfiling", request, lambda r: r.profiling_enabled)


def profiling_summary(session_id: str, stage: int | None) -> Call[list[pb.NodeProfilingStats]]:
    request = pb.GetProfilingSummaryRequest(session_id=session_id)
    if stage is not None:
        request.stage = cast(pb.ExecutionStage, stage)  # an enum field takes the plain number
    return Call("GetProfilingSummary", request, lambda r: list(r.node_stats))


def _same(resp: Any) -> Any:
    """The reply itself is the result."""
    return resp


def _nothing(resp: Any) -> None:
    return None
