"""Standard tools against the gateway: grpcurl through reflection, promtool on /metrics."""

from __future__ import annotations

import json
import shutil
import subprocess

import grpc
import pytest
from helpers import procs

from cuvis_cluster.wire.pb import pb, pb_grpc

pytestmark = pytest.mark.integration


def test_grpcurl_list_describe_and_health_check(cluster):
    gateway = cluster.gateways[0].address
    listed = procs.grpcurl("-plaintext", gateway, "list")
    assert listed.returncode == 0, listed.stderr
    services = set(listed.stdout.split())
    assert {
        "cuvis_ai.v1.CuvisAIService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
        "cuvis_cluster.internal.v1.ClusterStatusService",
    } <= services
    described = procs.grpcurl("-plaintext", gateway, "describe", "cuvis_ai.v1.CuvisAIService")
    assert described.returncode == 0, described.stderr
    assert (
        "rpc Inference ( .cuvis_ai.v1.InferenceRequest ) returns ( .cuvis_ai.v1.InferenceResponse )"
        in described.stdout
    )
    assert (
        "rpc Train ( .cuvis_ai.v1.TrainRequest ) returns ( stream .cuvis_ai.v1.TrainResponse )"
        in described.stdout
    )
    health = procs.grpcurl("-plaintext", gateway, "grpc.health.v1.Health/Check")
    assert health.returncode == 0, health.stderr
    assert '"status": "SERVING"' in health.stdout
    per_service = procs.grpcurl(
        "-plaintext",
        "-d",
        '{"service": "cuvis_ai.v1.CuvisAIService"}',
        gateway,
        "grpc.health.v1.Health/Check",
    )
    assert '"status": "SERVING"' in per_service.stdout
    workers = procs.grpcurl(
        "-plaintext", gateway, "cuvis_cluster.internal.v1.ClusterStatusService/ListWorkers"
    )
    assert workers.returncode == 0, workers.stderr
    listed_workers = json.loads(workers.stdout)["workers"]
    assert len(listed_workers) == 2
    assert all(w.get("instanceId") or w.get("instance_id") for w in listed_workers)
    # A CuvisAIService call by grpcurl, routed to a worker.
    call = procs.grpcurl("-plaintext", gateway, "cuvis_ai.v1.CuvisAIService/ListAvailablePipelines")
    assert call.returncode == 0 and "standin-" in call.stdout


@pytest.mark.skipif(
    shutil.which("promtool") is None, reason="promtool not installed (apt-get install prometheus)"
)
def test_promtool_accepts_gateway_and_worker_metrics(cluster):
    stub = pb_grpc.CuvisAIServiceStub(cluster.gateways[0].channel())
    session = stub.CreateSession(pb.CreateSessionRequest()).session_id
    stub.Inference(pb.InferenceRequest(session_id=session))
    with pytest.raises(grpc.RpcError):
        stub.Inference(pb.InferenceRequest(session_id="missing"))
    list(stub.Train(pb.TrainRequest(session_id=session)))
    stub.CloseSession(pb.CloseSessionRequest(session_id=session))
    line = 'cuvis_gateway_rpc_requests_total{code="NOT_FOUND",method="cuvis_ai.v1.CuvisAIService/Inference"}'
    procs.wait_for(lambda: line in cluster.gateways[0].metrics_text(), timeout=10, what="metrics flushed")
    for server in (cluster.gateways[0], cluster.workers[0]):
        text = server.metrics_text()
        checked = subprocess.run(
            ["promtool", "check", "metrics"], input=text, capture_output=True, text=True, check=False
        )
        assert checked.returncode == 0, checked.stdout + checked.stderr
    text = cluster.gateways[0].metrics_text()
    assert (
        'cuvis_gateway_rpc_requests_total{code="NOT_FOUND",method="cuvis_ai.v1.CuvisAIService/Inference"}'
        in text
    )
    assert "cuvis_gateway_redis_up 1.0" in text
    assert 'cuvis_gateway_workers{state="live"} 2.0' in text
    assert session not in text  # never a session id in a label
