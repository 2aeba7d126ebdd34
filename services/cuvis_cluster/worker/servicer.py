"""``cuvis_ai.v1.CuvisAIService`` over the engine: decode, call the engine, encode.

No behaviour lives here. Each handler turns request fields into plain Python values, calls one
:class:`~cuvis_cluster.engine.api.EngineAPI` method, and builds the reply. Every exception goes
through :func:`cuvis_cluster.wire.status.abort_with`, the one error->status table, so a domain error
keeps its code and message and anything else becomes INTERNAL with a logged request id.

Inference is registered with a zero-copy request decoder and a one-copy reply encoder
(:mod:`cuvis_cluster.worker.fastpath`); the handler also accepts a regular ``InferenceRequest`` (e.g.
when called in-process) and returns an ``InferenceReply`` (``.to_message()`` gives the protobuf).
"""

from __future__ import annotations

import functools
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc

from cuvis_cluster.common.telemetry import WorkerMetrics
from cuvis_cluster.engine.api import EngineAPI, TrainStream
from cuvis_cluster.errors import Cancelled, CuvisError, InvalidArgument
from cuvis_cluster.routing.metadata import OWNER_METADATA
from cuvis_cluster.wire.pb import SERVICE_NAME, pb, pb_grpc
from cuvis_cluster.wire.status import abort_with, status_for
from cuvis_cluster.worker import fastpath, messages

log = logging.getLogger(__name__)


def owner_of(context: grpc.ServicerContext) -> str | None:
    """The session owner identity a gateway forwards in ``x-cuvis-owner`` (None when absent)."""
    for key, value in context.invocation_metadata() or ():
        if key == OWNER_METADATA:
            return value if isinstance(value, str) else value.decode("utf-8", "replace")
    return None


def _json_bytes(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), default=str).encode("utf-8")


def _unary(method: Callable) -> Callable:
    """Run a unary handler and abort with the mapped status on any exception."""

    @functools.wraps(method)
    def handler(self: CuvisAIServicer, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return method(self, request, context)
        except Exception as exc:
            abort_with(context, exc, method=method.__name__)

    return handler


class CuvisAIServicer(pb_grpc.CuvisAIServiceServicer):
    """The public service on one worker over an :class:`EngineAPI` (the engine facade, or a stand-in)."""

    def __init__(self, engine: EngineAPI, metrics: WorkerMetrics | None = None) -> None:
        self.engine = engine
        self.metrics = metrics

    # ---------------------------------------------------------------------------------- discovery
    @_unary
    def ListAvailablePipelines(
        self, request: pb.ListAvailablePipelinesRequest, context: grpc.ServicerContext
    ) -> pb.ListAvailablePipelinesResponse:
        tag = request.filter_tag if request.HasField("filter_tag") and request.filter_tag else None
        found = self.engine.list_pipelines(tag)
        return pb.ListAvailablePipelinesResponse(pipelines=[messages.pipeline_info(p) for p in found])

    @_unary
    def GetPipelineInfo(
        self, request: pb.GetPipelineInfoRequest, context: grpc.ServicerContext
    ) -> pb.GetPipelineInfoResponse:
        info = self.engine.pipeline_info(request.pipeline_path)
        return pb.GetPipelineInfoResponse(pipeline_info=messages.pipeline_info(info))

    # ----------------------------------------------------------------------------------- sessions
    @_unary
    def CreateSession(
        self, request: pb.CreateSessionRequest, context: grpc.ServicerContext
    ) -> pb.CreateSessionResponse:
        return pb.CreateSessionResponse(session_id=self.engine.create_session(owner=owner_of(context)))

    @_unary
    def SetSessionSearchPaths(
        self, request: pb.SetSessionSearchPathsRequest, context: grpc.ServicerContext
    ) -> pb.SetSessionSearchPathsResponse:
        append = request.append if request.HasField("append") else True
        paths = self.engine.set_search_paths(request.session_id, list(request.search_paths), append)
        return pb.SetSessionSearchPathsResponse(
            success=True, current_paths=list(paths.current), rejected_paths=list(paths.rejected)
        )

    @_unary
    def CloseSession(
        self, request: pb.CloseSessionRequest, context: grpc.ServicerContext
    ) -> pb.CloseSessionResponse:
        self.engine.close_session(request.session_id)
        return pb.CloseSessionResponse(success=True)

    # ------------------------------------------------------------------------------------ configs
    @_unary
    def ResolveConfig(
        self, request: pb.ResolveConfigRequest, context: grpc.ServicerContext
    ) -> pb.ResolveConfigResponse:
        resolved = self.engine.resolve_config(
            request.session_id or None, request.config_type, request.path, list(request.overrides)
        )
        return pb.ResolveConfigResponse(config_bytes=_json_bytes(resolved))

    @_unary
    def GetParameterSchema(
        self, request: pb.GetParameterSchemaRequest, context: grpc.ServicerContext
    ) -> pb.GetParameterSchemaResponse:
        schema = self.engine.parameter_schema(request.config_type)
        return pb.GetParameterSchemaResponse(json_schema=json.dumps(schema, default=str))

    @_unary
    def ValidateConfig(
        self, request: pb.ValidateConfigRequest, context: grpc.ServicerContext
    ) -> pb.ValidateConfigResponse:
        result = self.engine.validate_config(request.config_type, request.config_bytes)
        return pb.ValidateConfigResponse(
            valid=result.valid, errors=list(result.errors), warnings=list(result.warnings)
        )

    # ---------------------------------------------------------------------------------- pipelines
    @_unary
    def LoadPipeline(
        self, request: pb.LoadPipelineRequest, context: grpc.ServicerContext
    ) -> pb.LoadPipelineResponse:
        metadata = self.engine.load_pipeline(request.session_id, request.pipeline.config_bytes)
        return pb.LoadPipelineResponse(success=True, metadata=messages.pipeline_metadata(metadata))

    @_unary
    def LoadPipelineWeights(
        self, request: pb.LoadPipelineWeightsRequest, context: grpc.ServicerContext
    ) -> pb.LoadPipelineWeightsResponse:
        source = request.WhichOneof("weights_source")
        if source is None:
            raise InvalidArgument(
                "weights_source: set weights_path (a server-side .pt file) or weights_bytes (its content)",
                field="weights_source",
            )
        path = request.weights_path if source == "weights_path" else None
        data = request.weights_bytes if source == "weights_bytes" else None
        strict = request.strict if request.HasField("strict") else True
        resolved = self.engine.load_weights(request.session_id, path, data, strict)
        return pb.LoadPipelineWeightsResponse(success=True, resolved_path=str(resolved or ""))

    @_unary
    def SavePipeline(
        self, request: pb.SavePipelineRequest, context: grpc.ServicerContext
    ) -> pb.SavePipelineResponse:
        metadata = messages.metadata_from_wire(request.metadata) if request.HasField("metadata") else None
        saved = self.engine.save_pipeline(request.session_id, request.pipeline_path, metadata)
        return pb.SavePipelineResponse(
            success=True, pipeline_path=saved.pipeline_path, weights_path=saved.weights_path
        )

    @_unary
    def GetPipelineInputs(
        self, request: pb.GetPipelineInputsRequest, context: grpc.ServicerContext
    ) -> pb.GetPipelineInputsResponse:
        specs = self.engine.pipeline_inputs(request.session_id)
        return pb.GetPipelineInputsResponse(
            input_names=[s.name for s in specs], input_specs={s.name: messages.tensor_spec(s) for s in specs}
        )

    @_unary
    def GetPipelineOutputs(
        self, request: pb.GetPipelineOutputsRequest, context: grpc.ServicerContext
    ) -> pb.GetPipelineOutputsResponse:
        specs = self.engine.pipeline_outputs(request.session_id)
        return pb.GetPipelineOutputsResponse(
            output_names=[s.name for s in specs],
            output_specs={s.name: messages.tensor_spec(s) for s in specs},
        )

    @_unary
    def GetPipelineVisualization(
        self, request: pb.GetPipelineVisualizationRequest, context: grpc.ServicerContext
    ) -> pb.GetPipelineVisualizationResponse:
        picture = self.engine.visualize(
            request.session_id or None, request.format or "png", request.config_content or None
        )
        return pb.GetPipelineVisualizationResponse(image_data=bytes(picture.image), format=picture.format)

    # ----------------------------------------------------------------------------------- training
    @_unary
    def SetTrainRunConfig(
        self, request: pb.SetTrainRunConfigRequest, context: grpc.ServicerContext
    ) -> pb.SetTrainRunConfigResponse:
        from_config = self.engine.set_trainrun(request.session_id, request.config.config_bytes)
        return pb.SetTrainRunConfigResponse(success=True, pipeline_from_config=bool(from_config))

    def Train(self, request: pb.TrainRequest, context: grpc.ServicerContext) -> Iterator[pb.TrainResponse]:
        """Stream the run's events; exactly one terminal message, then the matching status.

        A client that cancels or disconnects cancels the run, so the session is free again; the same
        happens when the server's shutdown grace period runs out.
        """
        try:
            trainer = messages.trainer_type(request.trainer_type)
            data = (
                messages.json_config(request.data.config_bytes, field="data")
                if request.HasField("data")
                else None
            )
            training = (
                messages.json_config(request.training.config_bytes, field="training")
                if request.HasField("training")
                else None
            )
            run = self.engine.train(request.session_id, trainer, data, training)
        except Exception as exc:
            abort_with(context, exc, method="Train")
            return
        yield from self._stream_run(run, trainer, context)

    def _stream_run(
        self, run: TrainStream, trainer: str, context: grpc.ServicerContext
    ) -> Iterator[pb.TrainResponse]:
        finished = threading.Event()

        def on_rpc_done() -> None:
            if not finished.is_set():
                log.info("Train stream ended before the run; cancelling it")
                run.cancel("the client cancelled the Train stream or disconnected")

        context.add_callback(on_rpc_done)
        outcome, sent = "error", 0
        self._run_started()
        try:
            for event in run:
                reply = messages.progress(event)
                if not event.terminal:
                    yield reply
                    sent += 1
                    continue
                finished.set()
                outcome = event.status
                yield reply
                if event.status == "error":
                    error = run.error or CuvisError(event.message or "training failed")
                    abort_with(context, error, method="Train")
                elif event.status == "cancelled":
                    abort_with(context, Cancelled(event.message or "training was cancelled"), method="Train")
                return
            # The engine promises a terminal event; a run that just stops is a bug, reported as such.
            finished.set()
            raise RuntimeError("training run ended without a terminal event")
        except GeneratorExit:  # grpc dropped the stream (client gone, or shutdown)
            if not finished.is_set():
                outcome = "cancelled"
            raise
        except Exception as exc:
            if context.code() is not None:  # our own abort above
                raise
            finished.set()
            code, details = status_for(exc, method="Train")
            if sent:  # a run that already reported progress ends with an ERROR message, then the status
                yield pb.TrainResponse(status=pb.TRAIN_STATUS_ERROR, message=details)
            context.abort(code, details)
        finally:
            if not finished.is_set():
                finished.set()
                run.cancel("the Train stream was closed")
            self._run_finished(trainer, outcome)

    def _run_started(self) -> None:
        if self.metrics is not None:
            self.metrics.training_active.inc()

    def _run_finished(self, trainer: str, outcome: str) -> None:
        if self.metrics is not None:
            self.metrics.training_active.dec()
            self.metrics.training_runs.labels(trainer, outcome).inc()

    @_unary
    def StopTrain(self, request: pb.StopTrainRequest, context: grpc.ServicerContext) -> pb.StopTrainResponse:
        stopped = self.engine.stop_train(request.session_id)
        return pb.StopTrainResponse(accepted=stopped.accepted, message=stopped.message)

    @_unary
    def GetTrainStatus(
        self, request: pb.GetTrainStatusRequest, context: grpc.ServicerContext
    ) -> pb.GetTrainStatusResponse:
        event = self.engine.train_status(request.session_id)
        latest = pb.TrainResponse() if event is None else messages.progress(event)
        return pb.GetTrainStatusResponse(latest_progress=latest)

    @_unary
    def GetTrainingCapabilities(
        self, request: pb.GetTrainingCapabilitiesRequest, context: grpc.ServicerContext
    ) -> pb.GetTrainingCapabilitiesResponse:
        return messages.capabilities(self.engine.training_capabilities())

    # --------------------------------------------------------------------------------- train runs
    @_unary
    def SaveTrainRun(
        self, request: pb.SaveTrainRunRequest, context: grpc.ServicerContext
    ) -> pb.SaveTrainRunResponse:
        saved = self.engine.save_trainrun(
            request.session_id, request.trainrun_path, bool(request.save_weights)
        )
        return pb.SaveTrainRunResponse(
            success=True,
            trainrun_path=saved.trainrun_path,
            pipeline_path=saved.pipeline_path,
            weights_path=saved.weights_path,
        )

    @_unary
    def RestoreTrainRun(
        self, request: pb.RestoreTrainRunRequest, context: grpc.ServicerContext
    ) -> pb.RestoreTrainRunResponse:
        restored = self.engine.restore_trainrun(
            request.trainrun_path,
            request.weights_path if request.HasField("weights_path") else None,
            request.strict if request.HasField("strict") else True,
            request.session_id or None,
            owner_of(context),
        )
        return pb.RestoreTrainRunResponse(
            session_id=restored.session_id,
            trainrun=pb.TrainRunConfig(config_bytes=_json_bytes(restored.config)),
        )

    # ---------------------------------------------------------------------------------- inference
    @_unary
    def Inference(
        self, request: pb.InferenceRequest | fastpath.FastInferenceRequest, context: grpc.ServicerContext
    ) -> fastpath.InferenceReply:
        if isinstance(request, fastpath.FastInferenceRequest):
            session_id, output_filter = request.session_id, request.output_specs
            inputs = fastpath.inference_inputs(request)
        else:
            session_id, output_filter = request.session_id, list(request.output_specs)
            inputs = messages.inference_inputs(request.inputs)
        started = time.perf_counter()
        result = self.engine.infer(session_id, inputs, output_filter)
        if self.metrics is not None:
            self.metrics.inference_latency.observe(time.perf_counter() - started)
        # Serialized by grpc straight from the tensors (one copy each), see fastpath.InferenceReply.
        return fastpath.InferenceReply.build(result.tensors, messages.floats(result.metrics))

    # ------------------------------------------------------------------------------------ plugins
    @_unary
    def LoadPlugin(
        self, request: pb.LoadPluginRequest, context: grpc.ServicerContext
    ) -> pb.LoadPluginResponse:
        loaded = self.engine.load_plugin(request.session_id, request.manifest.config_bytes)
        return pb.LoadPluginResponse(registered_plugin=loaded.name, error=loaded.error)

    @_unary
    def ListLoadedPlugins(
        self, request: pb.ListLoadedPluginsRequest, context: grpc.ServicerContext
    ) -> pb.ListLoadedPluginsResponse:
        plugins = self.engine.list_plugins(request.session_id)
        return pb.ListLoadedPluginsResponse(plugins=[messages.plugin_info(p) for p in plugins])

    @_unary
    def GetPluginInfo(
        self, request: pb.GetPluginInfoRequest, context: grpc.ServicerContext
    ) -> pb.GetPluginInfoResponse:
        info = self.engine.plugin_info(request.session_id, request.plugin_name)
        return pb.GetPluginInfoResponse(plugin=messages.plugin_info(info))

    @_unary
    def ListAvailableNodes(
        self, request: pb.ListAvailableNodesRequest, context: grpc.ServicerContext
    ) -> pb.ListAvailableNodesResponse:
        nodes = self.engine.list_nodes(request.session_id or None)
        return pb.ListAvailableNodesResponse(nodes=[messages.node_info(n) for n in nodes])

    @_unary
    def ClearPluginCache(
        self, request: pb.ClearPluginCacheRequest, context: grpc.ServicerContext
    ) -> pb.ClearPluginCacheResponse:
        return pb.ClearPluginCacheResponse(
            cleared_count=int(self.engine.clear_plugin_cache(request.plugin_name or None))
        )

    # ---------------------------------------------------------------------------------- profiling
    @_unary
    def SetProfiling(
        self, request: pb.SetProfilingRequest, context: grpc.ServicerContext
    ) -> pb.SetProfilingResponse:
        enabled = self.engine.set_profiling(
            request.session_id,
            request.enabled,
            request.synchronize_cuda if request.HasField("synchronize_cuda") else False,
            request.reset if request.HasField("reset") else False,
            request.skip_first_n if request.HasField("skip_first_n") else 0,
        )
        return pb.SetProfilingResponse(profiling_enabled=bool(enabled))

    @_unary
    def GetProfilingSummary(
        self, request: pb.GetProfilingSummaryRequest, context: grpc.ServicerContext
    ) -> pb.GetProfilingSummaryResponse:
        stage = messages.WIRE_TO_STAGE.get(request.stage) if request.HasField("stage") else None
        if request.HasField("stage") and stage is None:
            raise InvalidArgument(
                "stage: pick TRAIN, VAL, TEST or INFERENCE, or leave it unset", field="stage"
            )
        stats = self.engine.profiling_summary(request.session_id, stage)
        return pb.GetProfilingSummaryResponse(node_stats=messages.profiling_stats(stats))


# --------------------------------------------------------------------------------------------------
# registration


def add_to_server(servicer: CuvisAIServicer, server: grpc.Server) -> None:
    """Register the service, with the zero-copy decoder for Inference.

    The handler table is derived from the service descriptor, so every method of the contract is
    served (a missing servicer method would fail here, at start-up, not at the first call).
    """
    service = pb.DESCRIPTOR.services_by_name["CuvisAIService"]
    handlers: dict[str, grpc.RpcMethodHandler] = {}
    for method in service.methods:
        behavior = getattr(servicer, method.name)
        request_class = _message_class(method.input_type.name)
        response_class = _message_class(method.output_type.name)
        deserializer = request_class.FromString
        serializer = response_class.SerializeToString
        if method.name == "Inference":
            deserializer = fastpath.parse_inference_request
            serializer = _serialize  # an InferenceReply or an InferenceResponse
        factory = (
            grpc.unary_stream_rpc_method_handler
            if method.server_streaming
            else grpc.unary_unary_rpc_method_handler
        )
        handlers[method.name] = factory(
            behavior, request_deserializer=deserializer, response_serializer=serializer
        )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    server.add_registered_method_handlers(SERVICE_NAME, handlers)


def _serialize(message: Any) -> bytes:
    return message.SerializeToString()


def _message_class(name: str) -> Any:
    return getattr(pb, name)
