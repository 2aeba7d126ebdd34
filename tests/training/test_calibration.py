"""Train(CALIBRATION) over gRPC: decider thresholds tuned on the val split, and explained skips."""

from __future__ import annotations

import json

import numpy as np
import pytest
from trainlib import CALIBRATION, frame, hooks, infer, prepared, train

from cuvis_cluster.wire.pb import pb

pytestmark = pytest.mark.integration


def _outcome(events: list) -> pb.CalibrationOutcome:
    ends = hooks(events, pb.TRAIN_HOOK_CALIBRATION_END)
    assert ends, [e.message for e in events]
    return ends[-1].event.calibration


def test_binary_decider_threshold_is_calibrated_on_val_by_f1(stub, session):
    prepared(stub, session, "rx_statistical")
    events = train(stub, session, CALIBRATION)
    assert events[-1].status == pb.TRAIN_STATUS_COMPLETE
    assert [e.status for e in events].count(pb.TRAIN_STATUS_COMPLETE) == 1
    assert hooks(events, pb.TRAIN_HOOK_CALIBRATION_START)
    progress = hooks(events, pb.TRAIN_HOOK_CALIBRATION_PROGRESS)
    assert progress and progress[-1].event.progress.done == progress[-1].event.progress.total == 2

    outcome = _outcome(events)
    assert outcome.applicable and outcome.phase_skip == pb.CALIBRATION_PHASE_SKIP_NONE
    assert outcome.split == pb.EXECUTION_STAGE_VAL and outcome.frames == 2 and outcome.anomalous_frames >= 1
    (decider,) = outcome.deciders
    assert decider.name == "decider" and decider.class_name == "BinaryDecider"
    assert decider.status == pb.DECIDER_CALIBRATION_STATUS_CALIBRATED and decider.thresholds_present
    change = decider.thresholds["threshold"]
    assert change.HasField("before") and change.before == pytest.approx(0.5)
    assert 0.0 <= change.after <= 1.0
    print(
        f"\nBinaryDecider threshold {change.before:.4f} -> {change.after:.6f}; "
        f"val F1 {decider.metrics['f1_before']:.4f} -> {decider.metrics['f1_after']:.4f}, "
        f"IoU {decider.metrics['iou_before']:.4f} -> {decider.metrics['iou_after']:.4f}"
    )
    assert decider.metrics["f1_after"] >= decider.metrics["f1_before"]
    assert decider.metrics["iou_after"] >= decider.metrics["iou_before"]

    # The new threshold is what Inference now applies.
    out = infer(stub, session, [frame(6)], ["logit.logits", "decider.decisions"])
    expected = 1.0 / (1.0 + np.exp(-out["logit.logits"].astype(np.float64))) >= change.after
    assert np.mean(expected == out["decider.decisions"]) > 0.999


def test_quantile_decider_is_calibrated(stub, session):
    prepared(stub, session, "deep_svdd", ["data.params.height=48", "data.params.width=48"])
    outcome = _outcome(train(stub, session, CALIBRATION))
    (decider,) = outcome.deciders
    assert decider.class_name == "QuantileBinaryDecider"
    assert decider.status == pb.DECIDER_CALIBRATION_STATUS_CALIBRATED
    change = decider.thresholds["quantile"]
    assert change.before == pytest.approx(0.995) and 0.5 <= change.after <= 1.0
    assert decider.metrics["f1_after"] >= decider.metrics["f1_before"]


def test_calibration_skips_are_explained(stub, session):
    trainrun = prepared(stub, session, "rx_statistical")
    no_val = {**trainrun["data"], "val_ids": []}
    request = pb.TrainRequest(session_id=session, trainer_type=CALIBRATION)
    request.data.config_bytes = json.dumps(no_val).encode()
    events = list(stub.Train(request, timeout=120))
    assert events[-1].status == pb.TRAIN_STATUS_COMPLETE
    outcome = _outcome(events)
    assert not outcome.applicable and outcome.phase_skip == pb.CALIBRATION_PHASE_SKIP_NO_SPLIT
    assert "val" in outcome.phase_detail
    assert all(d.status == pb.DECIDER_CALIBRATION_STATUS_SKIPPED for d in outcome.deciders)

    single = {
        **trainrun["data"],
        "params": {**trainrun["data"]["params"], "anomaly_rate": 0.0, "min_anomalies": 0},
    }
    request.data.config_bytes = json.dumps(single).encode()
    outcome = _outcome(list(stub.Train(request, timeout=120)))
    assert not outcome.applicable and outcome.phase_skip == pb.CALIBRATION_PHASE_SKIP_SINGLE_CLASS
    assert outcome.anomalous_frames == 0 and "single class" in outcome.phase_detail
    threshold = outcome.deciders[0].thresholds["threshold"]
    assert threshold.after == threshold.before  # left unchanged
