"""A tiny, real gRPC server speaking ``cuvis_ai.v1`` for the SDK's unit tests.

It is not a mock of grpc: requests cross a real channel on 127.0.0.1, so the SDK's channel options, service
config retries, deadlines, cancellation and error mapping all run for real. The behaviour behind the RPCs
is deliberately simple and scriptable:

* ``fail_next[method] = [(code, details), ...]`` makes the next calls of ``method`` fail with those codes;
* ``calls[method]`` counts attempts per method (so retries are visible);
* Train emits ``steps`` RUNNING messages (``delay`` s apart) then COMPLETE, and records a client
  cancellation in ``train_cancelled``.

Run as a script (``python fake_server.py PORT [--slow-seconds S]``) it serves until killed, which the
restart test uses.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
import uuid
from collections import Counter, defaultdict
from concurrent import futures

import grpc
import numpy as np
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from cuvis_cluster.wire.codec import numpy_to_proto, proto_to_numpy
from cuvis_cluster.wire.pb import control_pb2, control_pb2_grpc, pb, pb_grpc

SVG = (
    b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="120" height="40">'
    b'<g><text x="5" y="20">data</text><text x="60" y="20">rx</text></g></svg>'
)


class FakeService(pb_grpc.CuvisAIServiceServicer):
    def __init__(self, slow_seconds: float = 0.0, log_calls: bool = False) -> None:
        self.log_calls = log_calls
        self.sessions: dict[str, dict] = {}
        self.calls: Counter[str] = Counter()
        self.fail_next: dict[str, list[tuple[grpc.StatusCode, str]]] = defaultdict(list)
        self.metadata: list[dict[str, str]] = []
        self.train_cancelled = threading.Event()
        self.train_started = threading.Event()
        self.slow_seconds = slow_seconds
        self._lock = threading.Lock()

    # helpers -------------------------------------------------------------------------------------------
    def _enter(self, method: str, context: grpc.ServicerContext) -> None:
        if self.log_calls:
            print(f"call {method}", flush=True)
        with self._lock:
            self.calls[method] += 1
            self.metadata.append(dict(context.invocation_metadata()))
            pending = self.fail_next.get(method)
            failure = pending.pop(0) if pending else None
        if failure is not None:
            context.abort(*failure)

    def _session(self, session_id: str, context: grpc.ServicerContext) -> dict:
        session = self.sessions.get(session_id)
        if session is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"Session {session_id} not found")
        return session

    # discovery -----------------------------------------------------------------------------------------
    def ListAvailablePipelines(self, request, context):
        self._enter("ListAvailablePipelines", context)
        if self.slow_seconds:
            time.sleep(self.slow_seconds)
        items = [
            pb.PipelineInfo(
                pipeline_path="rx_statistical.yaml",
                metadata=pb.PipelineMetadata(name="rx_statistical", tags=["anomaly", "rx"]),
                weights_path="",
            ),
            pb.PipelineInfo(
                pipeline_path="deep_svdd.yaml",
                metadata=pb.PipelineMetadata(name="deep_svdd", tags=["anomaly", "gradient"]),
                weights_path="/srv/configs/pipeline/deep_svdd.pt",
            ),
        ]
        tag = request.filter_tag.lower() if request.HasField("filter_tag") else ""
        chosen = [p for p in items if not tag or tag in p.metadata.tags]
        return pb.ListAvailablePipelinesResponse(pipelines=chosen)

    def GetPipelineInfo(self, request, context):
        self._enter("GetPipelineInfo", context)
        if request.pipeline_path != "rx_statistical.yaml":
            context.abort(grpc.StatusCode.NOT_FOUND, f"pipeline {request.pipeline_path} not found")
        return pb.GetPipelineInfoResponse(
            pipeline_info=pb.PipelineInfo(
                pipeline_path="rx_statistical.yaml",
                resolved_path="/srv/configs/pipeline/rx_statistical.yaml",
                metadata=pb.PipelineMetadata(name="rx_statistical", tags=["anomaly"]),
                yaml_content="metadata: {name: rx_statistical}\nnodes: []\n",
            )
        )

    def GetPipelineVisualization(self, request, context):
        self._enter("GetPipelineVisualization", context)
        if request.format not in ("", "svg", "png", "dot", "mermaid"):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"format: unknown format {request.format!r}")
        if not request.session_id and not request.config_content:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "config_content: empty")
        data = SVG if request.format in ("", "svg") else b"digraph { data -> rx }"
        return pb.GetPipelineVisualizationResponse(image_data=data, format=request.format or "svg")

    # sessions ------------------------------------------------------------------------------------------
    def CreateSession(self, request, context):
        self._enter("CreateSession", context)
        session_id = uuid.uuid4().hex
        self.sessions[session_id] = {"trainrun": None, "pipeline": None}
        return pb.CreateSessionResponse(session_id=session_id)

    def CloseSession(self, request, context):
        self._enter("CloseSession", context)
        self._session(request.session_id, context)
        del self.sessions[request.session_id]
        return pb.CloseSessionResponse(success=True)

    def ResolveConfig(self, request, context):
        self._enter("ResolveConfig", context)
        self._session(request.session_id, context)
        if "missing" in request.path:
            context.abort(grpc.StatusCode.NOT_FOUND, f"config {request.path} not found")
        name = request.path.rsplit("/", 1)[-1]
        config = {"name": name, "path": request.path, "overrides": list(request.overrides)}
        if request.config_type == "pipeline":
            config = {"metadata": {"name": name}, "nodes": [], "connections": [], "path": request.path}
        return pb.ResolveConfigResponse(config_bytes=json.dumps(config).encode())

    def SetTrainRunConfig(self, request, context):
        self._enter("SetTrainRunConfig", context)
        session = self._session(request.session_id, context)
        session["trainrun"] = json.loads(request.config.config_bytes)
        session["pipeline"] = session["pipeline"] or {"from": "trainrun"}
        return pb.SetTrainRunConfigResponse(success=True, pipeline_from_config=True)

    def LoadPipeline(self, request, context):
        self._enter("LoadPipeline", context)
        session = self._session(request.session_id, context)
        session["pipeline"] = json.loads(request.pipeline.config_bytes)
        name = session["pipeline"].get("metadata", {}).get("name", "")
        return pb.LoadPipelineResponse(success=True, metadata=pb.PipelineMetadata(name=name))

    def LoadPipelineWeights(self, request, context):
        self._enter("LoadPipelineWeights", context)
        self._session(request.session_id, context)
        if request.WhichOneof("weights_source") is None:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "weights_source: set a path or bytes")
        return pb.LoadPipelineWeightsResponse(success=True, resolved_path=request.weights_path)

    def GetTrainStatus(self, request, context):
        self._enter("GetTrainStatus", context)
        session = self._session(request.session_id, context)
        return pb.GetTrainStatusResponse(latest_progress=session.get("last") or pb.TrainResponse())

    def Train(self, request, context):
        self._enter("Train", context)
        session = self._session(request.session_id, context)
        if session["trainrun"] is None:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, "no train-run config; call SetTrainRunConfig")
        overrides = dict(o.split("=", 1) for o in session["trainrun"].get("overrides", []))
        steps = int(overrides.get("steps", 5))
        delay = float(overrides.get("delay", 0.0))
        fail_at = int(overrides.get("fail_at", -1))
        # grpc stops pulling from this generator once the client cancels, so a check inside the loop
        # could miss it; the termination callback sees every ending that was not a normal finish.
        ended = {"normally": False}
        context.add_callback(lambda: None if ended["normally"] else self.train_cancelled.set())
        self.train_started.set()
        for step in range(steps):
            if not context.is_active():
                self.train_cancelled.set()
                return
            if step == fail_at:
                reason = "loss_nodes: node 'bce' does not exist"
                yield pb.TrainResponse(status=pb.TRAIN_STATUS_ERROR, message=f"training failed: {reason}")
                ended["normally"] = True
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, reason)
            resp = pb.TrainResponse(
                status=pb.TRAIN_STATUS_RUNNING,
                context=pb.Context(stage=pb.EXECUTION_STAGE_TRAIN, batch_idx=step, global_step=step + 1),
                losses={"total": 1.0 / (step + 1)},
                metrics={"iou": step / steps},
                event=pb.TrainEvent(
                    hook=pb.TRAIN_HOOK_TRAIN_PROGRESS, progress=pb.FrameProgress(done=step + 1, total=steps)
                ),
            )
            session["last"] = resp
            yield resp
            deadline = time.monotonic() + delay
            while time.monotonic() < deadline:
                if not context.is_active():
                    self.train_cancelled.set()
                    return
                time.sleep(0.01)
        done = pb.TrainResponse(status=pb.TRAIN_STATUS_COMPLETE, message="Statistical training complete")
        session["last"] = done
        ended["normally"] = True
        yield done

    def StopTrain(self, request, context):
        self._enter("StopTrain", context)
        return pb.StopTrainResponse(accepted=False, message="no training running")

    def SaveTrainRun(self, request, context):
        self._enter("SaveTrainRun", context)
        self._session(request.session_id, context)
        if not request.trainrun_path:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "trainrun_path: must not be empty")
        stem = request.trainrun_path.removesuffix(".yaml")
        return pb.SaveTrainRunResponse(
            success=True,
            trainrun_path=f"/out/{stem}.yaml",
            pipeline_path=f"/out/{stem}_pipeline.yaml",
            weights_path=f"/out/{stem}.pt" if request.save_weights else "",
        )

    def RestoreTrainRun(self, request, context):
        self._enter("RestoreTrainRun", context)
        if "missing" in request.trainrun_path:
            context.abort(grpc.StatusCode.NOT_FOUND, f"train run {request.trainrun_path} not found")
        session_id = request.session_id or uuid.uuid4().hex
        trainrun = {"name": "restored", "overrides": []}
        self.sessions[session_id] = {"trainrun": trainrun, "pipeline": {"from": "restore"}}
        return pb.RestoreTrainRunResponse(
            session_id=session_id, trainrun=pb.TrainRunConfig(config_bytes=json.dumps(trainrun).encode())
        )

    def GetPipelineInputs(self, request, context):
        self._enter("GetPipelineInputs", context)
        self._session(request.session_id, context)
        spec = pb.TensorSpec(name="cube", shape=[-1, -1, -1, 61], dtype=pb.D_TYPE_FLOAT32, required=True)
        return pb.GetPipelineInputsResponse(input_names=["cube"], input_specs={"cube": spec})

    def GetPipelineOutputs(self, request, context):
        self._enter("GetPipelineOutputs", context)
        self._session(request.session_id, context)
        spec = pb.TensorSpec(name="rx.scores", shape=[-1, -1, -1, 1], dtype=pb.D_TYPE_FLOAT32)
        return pb.GetPipelineOutputsResponse(output_names=["rx.scores"], output_specs={"rx.scores": spec})

    def Inference(self, request, context):
        self._enter("Inference", context)
        session = self._session(request.session_id, context)
        if session["pipeline"] is None:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, "no pipeline loaded; call LoadPipeline")
        if not request.inputs.HasField("cube"):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "inputs.cube: required input missing")
        cube = proto_to_numpy(request.inputs.cube).astype(np.float32)
        scores = cube.mean(axis=-1, keepdims=True)
        decisions = scores > np.median(scores)
        outputs = {"rx.scores": numpy_to_proto(scores), "decider.decisions": numpy_to_proto(decisions)}
        if request.output_specs:
            wanted = set(request.output_specs)
            outputs = {k: v for k, v in outputs.items() if k in wanted or k.rsplit(".", 1)[-1] in wanted}
        return pb.InferenceResponse(outputs=outputs, metrics={"metrics.frames": float(cube.shape[0])})


class FakeClusterStatus(control_pb2_grpc.ClusterStatusServiceServicer):
    def __init__(self, service: FakeService) -> None:
        self.service = service

    def ListWorkers(self, request, context):
        worker = control_pb2.WorkerStatus(
            instance_id="inst-1234567890ab",
            address="127.0.0.1:6001",
            version="0.1.0",
            device="cpu",
            sessions=len(self.service.sessions),
            capacity=16,
            session_ids=sorted(self.service.sessions),
            updated_unix_ms=int(time.time() * 1000),
        )
        return control_pb2.ListWorkersResponse(workers=[worker])


class FakeServer:
    """Start with ``FakeServer().start()``; ``address``, ``service`` and ``stop()``."""

    def __init__(
        self,
        port: int = 0,
        *,
        slow_seconds: float = 0.0,
        cluster_status: bool = True,
        log_calls: bool = False,
        credentials: grpc.ServerCredentials | None = None,
    ) -> None:
        self.service = FakeService(slow_seconds=slow_seconds, log_calls=log_calls)
        self.server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=8),
            options=[("grpc.max_receive_message_length", 1 << 30), ("grpc.max_send_message_length", 1 << 30)],
        )
        pb_grpc.add_CuvisAIServiceServicer_to_server(self.service, self.server)
        if cluster_status:
            status = FakeClusterStatus(self.service)
            control_pb2_grpc.add_ClusterStatusServiceServicer_to_server(status, self.server)
        self.health = health.HealthServicer()
        self.health.set("", health_pb2.HealthCheckResponse.SERVING)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        if credentials is None:
            self.port = self.server.add_insecure_port(f"127.0.0.1:{port}")
        else:
            self.port = self.server.add_secure_port(f"127.0.0.1:{port}", credentials)
        self.address = f"127.0.0.1:{self.port}"

    def start(self) -> FakeServer:
        self.server.start()
        return self

    def stop(self) -> None:
        self.server.stop(grace=None).wait(5)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("port", type=int)
    parser.add_argument("--slow-seconds", type=float, default=0.0)
    args = parser.parse_args()
    server = FakeServer(args.port, slow_seconds=args.slow_seconds, log_calls=True).start()
    print(f"serving on {server.address}", flush=True)
    server.server.wait_for_termination()


if __name__ == "__main__":
    main()
