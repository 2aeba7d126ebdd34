"""A small, fast stand-in for ``cuvis-worker`` used by the gateway tests and the benchmark.

A real gRPC server (the same :class:`~cuvis_cluster.common.serving.GrpcServer` bootstrap, health,
reflection) implementing a few ``CuvisAIService`` methods over an in-memory session table, and the
real cluster side of the worker: :mod:`cuvis_cluster.worker.membership` (registration, heartbeat,
routes), :mod:`~cuvis_cluster.worker.fencing` and :mod:`~cuvis_cluster.worker.control`. It starts in
well under a second, so routing and failure tests do not pay for torch.

* CreateSession / CloseSession: sessions with owners (``x-cuvis-owner``), limited by --max-sessions;
* Inference: answers with the request size and (when ``output_specs`` has "crc") the CRC-32 of
  ``inputs.cube.raw_data`` as the shape of ``outputs['request']``, and the serving worker's instance
  in ``metrics['worker.<instance>']``;
* Train: a stream of TrainResponse events every --train-interval seconds (``--train-steps``); a
  cancelled stream marks the session's train status CANCELLED (GetTrainStatus shows it);
* ListAvailablePipelines: one pipeline named after the instance id (shows round-robin);
* raw ``/bench.Sink/Put`` for the benchmark: counts bytes, no protobuf.

Run: ``python tests/gateway/standin_worker.py --listen 127.0.0.1:0 --redis-url redis://...``
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
import time
import uuid
import zlib
from pathlib import Path

import grpc

from cuvis_cluster.common.serving import GrpcServer, ShutdownSignal, configure_logging
from cuvis_cluster.common.settings import WorkerSettings
from cuvis_cluster.common.telemetry import WorkerMetrics, serve_metrics
from cuvis_cluster.routing.metadata import OWNER_METADATA
from cuvis_cluster.wire.pb import SERVICE_NAME, pb, pb_grpc
from cuvis_cluster.worker.control import WorkerControlServicer
from cuvis_cluster.worker.fencing import fencing_interceptor
from cuvis_cluster.worker.membership import ClusterMembership

log = logging.getLogger("standin")


class Session:
    def __init__(self, owner: str | None) -> None:
        self.id = uuid.uuid4().hex
        self.owner = owner
        self.created_at = time.time()
        self.last_used = self.created_at
        self.train_status = pb.TRAIN_STATUS_UNSPECIFIED


class Sessions:
    """The SessionDirectory protocol of :mod:`cuvis_cluster.worker.membership`."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.draining = False
        self._sessions: dict[str, Session] = {}
        self._listeners: list = []
        self._lock = threading.Lock()

    @property
    def count(self) -> int:
        return len(self._sessions)

    def list(self) -> list[Session]:
        with self._lock:
            return list(self._sessions.values())

    def set_draining(self, draining: bool) -> None:
        self.draining = draining

    def add_listener(self, listener) -> None:
        self._listeners.append(listener)

    def create(self, owner: str | None) -> Session:
        with self._lock:
            if self.draining:
                raise _Abort(grpc.StatusCode.UNAVAILABLE, "worker is draining")
            if len(self._sessions) >= self.capacity:
                raise _Abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "session limit reached")
            s = Session(owner)
            self._sessions[s.id] = s
        for listener in self._listeners:
            listener.session_created(s)
        return s

    def get(self, session_id: str, owner: str | None) -> Session:
        s = self._sessions.get(session_id)
        if s is None or (owner is not None and s.owner is not None and s.owner != owner):
            raise _Abort(grpc.StatusCode.NOT_FOUND, f"Session {session_id} not found")
        s.last_used = time.time()
        return s

    def close(self, session_id: str, owner: str | None) -> None:
        self.get(session_id, owner)
        with self._lock:
            self._sessions.pop(session_id, None)
        for listener in self._listeners:
            listener.session_closed(session_id)


class _Abort(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _owner(context: grpc.ServicerContext) -> str | None:
    for key, value in context.invocation_metadata():
        if key == OWNER_METADATA:
            return value
    return None


class Servicer(pb_grpc.CuvisAIServiceServicer):
    def __init__(self, sessions: Sessions, instance: str, steps: int, interval: float) -> None:
        self.sessions = sessions
        self.instance = instance
        self.steps = steps
        self.interval = interval

    def _guard(self, context, fn):
        try:
            return fn()
        except _Abort as exc:
            context.abort(exc.code, exc.message)

    def CreateSession(self, request, context):
        return self._guard(
            context, lambda: pb.CreateSessionResponse(session_id=self.sessions.create(_owner(context)).id)
        )

    def CloseSession(self, request, context):
        def run():
            self.sessions.close(request.session_id, _owner(context))
            return pb.CloseSessionResponse(success=True)

        return self._guard(context, run)

    def ListAvailablePipelines(self, request, context):
        return pb.ListAvailablePipelinesResponse(
            pipelines=[pb.PipelineInfo(pipeline_path=f"standin-{self.instance}")]
        )

    def Inference(self, request, context):
        def run():
            self.sessions.get(request.session_id, _owner(context))
            # Exact figures go in a tensor shape (int64); metrics are float32.
            crc = zlib.crc32(request.inputs.cube.raw_data) if "crc" in request.output_specs else 0
            seen = pb.Tensor(shape=[request.ByteSize(), crc])
            return pb.InferenceResponse(outputs={"request": seen}, metrics={f"worker.{self.instance}": 1.0})

        return self._guard(context, run)

    def GetTrainStatus(self, request, context):
        def run():
            s = self.sessions.get(request.session_id, _owner(context))
            return pb.GetTrainStatusResponse(latest_progress=pb.TrainResponse(status=s.train_status))

        return self._guard(context, run)

    def Train(self, request, context):
        try:
            session = self.sessions.get(request.session_id, _owner(context))
        except _Abort as exc:
            context.abort(exc.code, exc.message)
        session.train_status = pb.TRAIN_STATUS_RUNNING
        cancelled = threading.Event()
        context.add_callback(cancelled.set)
        for step in range(self.steps):
            if cancelled.wait(self.interval) or not context.is_active():
                session.train_status = pb.TRAIN_STATUS_CANCELLED
                print(f"train cancelled session={session.id}", flush=True)
                return
            yield pb.TrainResponse(status=pb.TRAIN_STATUS_RUNNING, message=f"step {step}")
        session.train_status = pb.TRAIN_STATUS_COMPLETE
        yield pb.TrainResponse(status=pb.TRAIN_STATUS_COMPLETE, message="done")


def _sink_handler() -> grpc.GenericRpcHandler:
    def put(request: bytes, context) -> bytes:
        return len(request).to_bytes(8, "big")

    def echo(request: bytes, context) -> bytes:
        return request

    return grpc.method_handlers_generic_handler(
        "bench.Sink",
        {
            "Put": grpc.unary_unary_rpc_method_handler(put),
            "Echo": grpc.unary_unary_rpc_method_handler(echo),
        },
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--listen", required=True, help="HOST:PORT with a real port (it is advertised)")
    parser.add_argument("--redis-url")
    parser.add_argument("--max-sessions", type=int, default=16)
    parser.add_argument("--metrics-port", type=int, default=0)
    parser.add_argument("--heartbeat-seconds", type=float, default=0.5)
    parser.add_argument("--heartbeat-ttl-seconds", type=float, default=2.0)
    parser.add_argument("--train-steps", type=int, default=50)
    parser.add_argument("--train-interval", type=float, default=0.1)
    parser.add_argument("--tls-cert", type=Path)
    parser.add_argument("--tls-key", type=Path)
    parser.add_argument("--tls-client-ca", type=Path)
    args = parser.parse_args(argv)
    configure_logging("INFO")
    settings = WorkerSettings(
        listen=args.listen,
        redis_url=args.redis_url,
        max_sessions=args.max_sessions,
        heartbeat_seconds=args.heartbeat_seconds,
        heartbeat_ttl_seconds=args.heartbeat_ttl_seconds,
        metrics_port=args.metrics_port,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        tls_client_ca=args.tls_client_ca,
        max_message_bytes=(1 << 31) - 1,
    )
    shutdown = ShutdownSignal.install()
    instance = uuid.uuid4().hex
    sessions = Sessions(args.max_sessions)
    metrics = WorkerMetrics()
    interceptors = []
    if args.redis_url:
        interceptors.append(fencing_interceptor(instance))
    server = GrpcServer(settings, metrics=metrics, interceptors=interceptors, component="standin")
    servicer = Servicer(sessions, instance, args.train_steps, args.train_interval)
    server.add_service(SERVICE_NAME, lambda s: pb_grpc.add_CuvisAIServiceServicer_to_server(servicer, s))
    server.server.add_generic_rpc_handlers((_sink_handler(),))
    membership = None
    if args.redis_url:
        membership = ClusterMembership(
            settings, sessions, metrics, lambda: {"device": "cpu"}, instance_id=instance
        )
        control = WorkerControlServicer(membership, shutdown=shutdown)
        server.add_service(control.SERVICE_NAME, control.add_to_server)
    server.start()
    address = server.address
    if membership is not None:
        membership.start()
    serve_metrics(metrics.registry, "127.0.0.1", args.metrics_port)
    print(f"standin ready on {address} instance {instance} pid {os.getpid()}", flush=True)
    shutdown.wait()
    if membership is not None:
        membership.drain(2.0)
    server.shutdown(2.0, hurry=shutdown.hurry)
    if membership is not None:
        membership.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
