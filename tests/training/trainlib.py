"""Client-side helpers of the training tests (they only speak the public API)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable

import grpc
import numpy as np
from helpers.cuvis import pipeline_of  # noqa: F401  (re-exported for the training tests)

from cuvis_cluster.wire import codec
from cuvis_cluster.wire.pb import pb

# 32x32 synthetic frames, 4 train / 2 val / 2 test: a gradient epoch takes about a second on 2 CPU cores.
SMALL_DATA = [
    "data.params.height=32",
    "data.params.width=32",
    "data.params.num_frames=8",
    "data.train_ids=[0,1,2,3]",
    "data.val_ids=[4,5]",
    "data.test_ids=[6,7]",
    "data.batch_size=2",
]
TEST_IDS = (6, 7)
GRADIENT = pb.TRAINER_TYPE_GRADIENT
STATISTICAL = pb.TRAINER_TYPE_STATISTICAL
CALIBRATION = pb.TRAINER_TYPE_CALIBRATION


def resolve(
    stub, session_id: str, path: str, overrides: Iterable[str] = (), config_type: str = "trainrun"
) -> dict:
    reply = stub.ResolveConfig(
        pb.ResolveConfigRequest(
            session_id=session_id, config_type=config_type, path=path, overrides=list(overrides)
        )
    )
    return json.loads(reply.config_bytes)


def set_trainrun(stub, session_id: str, trainrun: dict) -> pb.SetTrainRunConfigResponse:
    return stub.SetTrainRunConfig(
        pb.SetTrainRunConfigRequest(
            session_id=session_id, config=pb.TrainRunConfig(config_bytes=json.dumps(trainrun).encode())
        )
    )


def train(
    stub, session_id: str, trainer=GRADIENT, training: dict | None = None, timeout: float = 300
) -> list:
    request = pb.TrainRequest(session_id=session_id, trainer_type=trainer)
    if training is not None:
        request.training.config_bytes = json.dumps(training).encode()
    return list(stub.Train(request, timeout=timeout))


def prepared(stub, session_id: str, name: str, overrides: Iterable[str] = ()) -> dict:
    """ResolveConfig trainrun/<name> (small data) -> SetTrainRunConfig -> Train STATISTICAL (phase one)."""
    trainrun = resolve(stub, session_id, f"trainrun/{name}", [*SMALL_DATA, *overrides])
    assert set_trainrun(stub, session_id, trainrun).success
    events = train(stub, session_id, STATISTICAL)
    assert events[-1].status == pb.TRAIN_STATUS_COMPLETE, events[-1].message
    return trainrun


def status(stub, session_id: str) -> pb.TrainResponse:
    return stub.GetTrainStatus(pb.GetTrainStatusRequest(session_id=session_id)).latest_progress


def wait_status(stub, session_id: str, wanted: int, timeout: float) -> tuple[pb.TrainResponse, float]:
    """Poll GetTrainStatus until it reports ``wanted``; (last reply, seconds waited). Bounded."""
    start = time.monotonic()
    while True:
        reply = status(stub, session_id)
        waited = time.monotonic() - start
        if reply.status == wanted or waited > timeout:
            return reply, waited
        time.sleep(0.05)


def frame(frame_id: int, size: int = 32) -> dict:
    from cuvis_cluster.engine.data.synthetic import generate_frame

    return generate_frame(frame_id, height=size, width=size, seed=0)


def batch_of(frames: list[dict]) -> pb.InputBatch:
    cube = np.stack([np.asarray(f["cube"], dtype=np.float32) for f in frames])
    return pb.InputBatch(
        cube=codec.encode(cube), wavelengths=codec.encode(np.asarray(frames[0]["wavelengths"], np.float32))
    )


def infer(stub, session_id: str, frames: list[dict], wanted: Iterable[str] = ()) -> dict[str, np.ndarray]:
    reply = stub.Inference(
        pb.InferenceRequest(session_id=session_id, inputs=batch_of(frames), output_specs=list(wanted)),
        timeout=120,
    )
    return {name: codec.decode(t).copy() for name, t in reply.outputs.items()}


def average_precision(scores: np.ndarray, targets: np.ndarray) -> float:
    """Area under the step-wise precision/recall curve (ties count as one threshold)."""
    s = scores.reshape(-1).astype(np.float64)
    t = targets.reshape(-1).astype(np.float64)
    order = np.argsort(-s, kind="stable")
    s, t = s[order], t[order]
    tp = np.cumsum(t)
    rank = np.arange(1, len(s) + 1)
    last = np.r_[s[1:] != s[:-1], True]
    precision, recall = tp[last] / rank[last], tp[last] / t.sum()
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def roc_auc(scores: np.ndarray, targets: np.ndarray) -> float:
    """Pixel ROC-AUC (Mann-Whitney U over average ranks, so ties count a half)."""
    s = scores.reshape(-1).astype(np.float64)
    t = targets.reshape(-1).astype(bool)
    _, inverse, counts = np.unique(s, return_inverse=True, return_counts=True)
    first = np.cumsum(counts) - counts  # tied scores share their mean rank
    ranks = first[inverse] + (counts[inverse] + 1) / 2.0
    n1, n0 = int(t.sum()), int((~t).sum())
    return float((ranks[t].sum() - n1 * (n1 + 1) / 2.0) / (n1 * n0))


def separation(scores: np.ndarray, targets: np.ndarray) -> float:
    """ln(median anomaly score / 99th-percentile normal score): how far the anomalies stand out above the
    bulk of the normal pixels (> 0: the typical anomaly scores above 99 % of the normal pixels)."""
    s = scores.reshape(-1).astype(np.float64)
    t = targets.reshape(-1).astype(bool)
    return float(np.log(np.median(s[t]) / np.quantile(s[~t], 0.99)))


def iou(decisions: np.ndarray, targets: np.ndarray) -> float:
    d, t = decisions.reshape(-1).astype(bool), targets.reshape(-1).astype(bool)
    union = (d | t).sum()
    return float((d & t).sum() / union) if union else 0.0


def split_quality(stub, session_id: str, score_output: str) -> dict[str, float]:
    """AP, ROC-AUC and separation of the scores and IoU of the decider on the test frames (anomalies =
    brown lentils and stones), computed here from Inference outputs."""
    frames = [frame(i) for i in TEST_IDS]
    out = infer(stub, session_id, frames, [score_output, "decider.decisions"])
    truth = np.stack([np.isin(f["mask"], (2, 3)) for f in frames])[..., None]
    scores = out[score_output]
    return {
        "ap": average_precision(scores, truth),
        "auc": roc_auc(scores, truth),
        "separation": separation(scores, truth),
        "iou": iou(out["decider.decisions"], truth),
    }


def hooks(events: list, hook: int) -> list:
    return [e for e in events if e.HasField("event") and e.event.hook == hook]


def rpc_code(call) -> grpc.StatusCode:
    try:
        call()
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK
