"""Inference over gRPC vs the bare in-process forward, for RX on a 1x512x512x61 float32 cube.

Not a test: prints figures. One run, one worker process on loopback, interleaved repetitions, medians.
The worker is stopped on any exit (Ctrl-C and SIGTERM included) and dies with the bench if it is killed.

    .venv/bin/python bench/inference_bench.py [--reps 15] [--size 512] [--device cpu]

What is measured (all times are wall-clock medians over the repetitions, taken round-robin in one run so
that the machine's noise hits every variant alike):

* ``bare``   the same pipeline (same config, same weights) called in this process:
             ``pipeline(batch, Stage.INFERENCE)`` under ``torch.no_grad()`` on a ready torch tensor;
* ``sdk``    ``Session.infer(cube, wavelengths, output_specs=...)`` of the client SDK, as a user calls it:
             the request written with one copy of the cube (``wire.fastwire``), the reply's tensors
             decoded as views on the received bytes;
* ``pb``     the same call made the plain protobuf way: build an ``InferenceRequest`` with the codec,
             call the generated stub, decode the outputs with ``codec.decode``;
* ``floor``  the one-copy request of ``sdk`` for an unknown session: encoding, transport, the worker's
             decoding and the error reply, no pipeline; the protocol cost any Inference pays;
* ``server`` the worker's own pipeline time (its ``cuvis_worker_inference_duration_seconds``).

The worker is trained statistically on the synthetic Lentils data (small frames) first; the bench
checks that the RPC outputs equal the in-process outputs before timing anything.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cuvis_cluster.client import connect
from cuvis_cluster.common.children import popen_kwargs, stop_children
from cuvis_cluster.common.ports import free_port
from cuvis_cluster.engine.data.synthetic import generate_frame
from cuvis_cluster.engine.nodes.base import NodeRegistry, Stage
from cuvis_cluster.engine.pipeline import Pipeline
from cuvis_cluster.engine.weights import read_weights
from cuvis_cluster.wire import codec, fastwire
from cuvis_cluster.wire.pb import pb, pb_grpc

OUTPUTS = ["rx_detector.scores", "decider.decisions"]
MAX_MESSAGE = 1 << 30
OPTIONS = [("grpc.max_send_message_length", MAX_MESSAGE), ("grpc.max_receive_message_length", MAX_MESSAGE)]


def start_worker(workdir: Path, device: str) -> tuple[subprocess.Popen, str, int]:
    port, metrics_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CUVIS_")}
    argv = [
        str(Path(sys.executable).parent / "cuvis-worker"),
        "--listen", f"127.0.0.1:{port}",
        "--metrics-port", str(metrics_port),
        "--output-dir", str(workdir / "outputs"),
        "--device", device,
        "--log-level", "WARNING",
    ]  # fmt: skip
    # Own process group; killed by the kernel if this process dies first (PR_SET_PDEATHSIG).
    proc = subprocess.Popen(argv, cwd=workdir, env=env, **popen_kwargs())
    address = f"127.0.0.1:{port}"
    try:
        wait_healthy(proc, address)
    except BaseException:  # not healthy, or Ctrl-C / SIGTERM while waiting
        stop_children([proc], grace=5)
        raise
    return proc, address, metrics_port


def wait_healthy(proc: subprocess.Popen, address: str) -> None:
    deadline = time.monotonic() + 180
    with grpc.insecure_channel(address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"cuvis-worker exited with {proc.returncode}")
            try:
                if health.Check(health_pb2.HealthCheckRequest(), timeout=1).status == 1:
                    break
            except grpc.RpcError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit("cuvis-worker did not become healthy")
            time.sleep(0.2)


def server_inference_seconds(metrics_port: int) -> tuple[float, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as response:
        text = response.read().decode()
    total = float(
        re.search(r"^cuvis_worker_inference_duration_seconds_sum ([0-9.e+-]+)$", text, re.M).group(1)
    )
    count = float(
        re.search(r"^cuvis_worker_inference_duration_seconds_count ([0-9.e+-]+)$", text, re.M).group(1)
    )
    return total, count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    args = parser.parse_args()

    # A SIGTERM now unwinds like Ctrl-C, so the worker is stopped below whatever happens.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    workdir = Path(tempfile.mkdtemp(prefix="cuvis-bench-"))
    proc, address, metrics_port = start_worker(workdir, args.device)
    try:
        run(address, metrics_port, args)
    finally:
        stop_children([proc], grace=60)


def run(address: str, metrics_port: int, args: argparse.Namespace) -> None:
    channel = grpc.insecure_channel(address, options=OPTIONS)
    stub = pb_grpc.CuvisAIServiceStub(channel)
    raw_inference = channel.unary_unary(
        "/cuvis_ai.v1.CuvisAIService/Inference", response_deserializer=pb.InferenceResponse.FromString
    )

    # Train RX statistically on the worker, save it, and build the same pipeline in this process.
    session = stub.CreateSession(pb.CreateSessionRequest()).session_id
    trainrun = json.loads(
        stub.ResolveConfig(
            pb.ResolveConfigRequest(
                session_id=session, config_type="trainrun", path="trainrun/rx_statistical"
            )
        ).config_bytes
    )
    stub.SetTrainRunConfig(
        pb.SetTrainRunConfigRequest(
            session_id=session, config=pb.TrainRunConfig(config_bytes=json.dumps(trainrun).encode())
        )
    )
    events = list(stub.Train(pb.TrainRequest(session_id=session, trainer_type=pb.TRAINER_TYPE_STATISTICAL)))
    assert events[-1].status == pb.TRAIN_STATUS_COMPLETE, events[-1].message
    saved = stub.SavePipeline(pb.SavePipelineRequest(session_id=session, pipeline_path="bench/rx.yaml"))
    import yaml

    pipeline = Pipeline.from_config(yaml.safe_load(Path(saved.pipeline_path).read_text()), NodeRegistry())
    pipeline.load_weights_payload(read_weights(Path(saved.weights_path).read_bytes()), strict=True)
    device = torch.device("cuda" if args.device != "cpu" and torch.cuda.is_available() else "cpu")
    pipeline.to(device).eval()

    frame = generate_frame(0, height=args.size, width=args.size, seed=1)
    cube = np.ascontiguousarray(frame["cube"][None].astype(np.float32))  # 1 x S x S x 61 float32
    wavelengths = frame["wavelengths"].astype(np.float32)
    print(
        f"cube {cube.shape} {cube.dtype} = {cube.nbytes / 2**20:.1f} MiB; outputs {OUTPUTS}; device {device}"
    )

    def bare() -> dict:
        batch = {"cube": torch.from_numpy(cube), "wavelengths": torch.from_numpy(wavelengths)}
        with torch.no_grad():
            out = pipeline(batch, Stage.INFERENCE)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return out

    sdk_client = connect(address, timeout=60)
    sdk_session = sdk_client.session(session)

    def sdk() -> dict:
        return dict(sdk_session.infer(cube, wavelengths, output_specs=OUTPUTS, timeout=120))

    def protobuf() -> dict:
        request = pb.InferenceRequest(session_id=session, output_specs=OUTPUTS)
        request.inputs.cube.CopyFrom(codec.encode(cube))
        request.inputs.wavelengths.CopyFrom(codec.encode(wavelengths))
        reply = stub.Inference(request, timeout=120)
        return {name: codec.decode(t) for name, t in reply.outputs.items()}

    def floor() -> None:
        tensors = {"cube": cube, "wavelengths": wavelengths}
        data = fastwire.encode_inference_request("no-such-session", tensors)
        try:
            raw_inference(data, timeout=120)
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.NOT_FOUND, exc
        else:
            raise AssertionError("an unknown session must be NOT_FOUND")

    # Same numbers every way (the server runs the same weights on the same bytes).
    local, via_sdk, via_pb = bare(), sdk(), protobuf()
    for name in OUTPUTS:
        expected = local[name].cpu().numpy()
        assert np.array_equal(expected, via_sdk[name]) and np.array_equal(expected, via_pb[name]), name

    variants = (("bare", bare), ("sdk", sdk), ("pb", protobuf), ("floor", floor))
    timings: dict[str, list[float]] = {name: [] for name, _ in variants}
    server: list[float] = []
    for rep in range(args.reps):
        # Rotate the starting variant so that none always runs first (or after the same neighbour).
        for name, fn in variants[rep % len(variants) :] + variants[: rep % len(variants)]:
            before = server_inference_seconds(metrics_port)[0] if name == "sdk" else 0.0
            time.sleep(0.2)  # let the other process settle (client and worker share the cores)
            started = time.perf_counter()
            fn()
            timings[name].append(time.perf_counter() - started)
            if name == "sdk":
                server.append(server_inference_seconds(metrics_port)[0] - before)

    med = {name: statistics.median(values) for name, values in timings.items()}
    med["server"] = statistics.median(server)
    print(f"repetitions: {args.reps} (interleaved, rotating order), medians in ms")
    for name in ("bare", "server", "sdk", "pb", "floor"):
        values = timings.get(name, server)
        low, high = min(values) * 1000, max(values) * 1000
        print(f"  {name:7s} {med[name] * 1000:8.1f}   (min {low:7.1f}, max {high:7.1f})")
    print(f"ratio sdk/bare    = {med['sdk'] / med['bare']:.2f}   (goal <= 1.5 on CPU)")
    print(f"ratio pb/bare     = {med['pb'] / med['bare']:.2f}")
    print(f"ratio floor/bare  = {med['floor'] / med['bare']:.2f}   (protocol cost alone, no pipeline)")
    print(f"ratio sdk/pb      = {med['sdk'] / med['pb']:.2f}")
    print(f"ratio sdk/server  = {med['sdk'] / med['server']:.2f}   (against the worker's own forward time)")
    sdk_client.close()
    stub.CloseSession(pb.CloseSessionRequest(session_id=session))
    channel.close()


if __name__ == "__main__":
    main()
