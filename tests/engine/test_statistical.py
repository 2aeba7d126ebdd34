"""Statistical training through the Engine: the event stream, errors, cancellation and the training lock."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from cuvis_cluster.engine.facade import Engine
from cuvis_cluster.errors import FailedPrecondition, InvalidArgument

REPO = Path(__file__).resolve().parents[2]


def session_with(engine: Engine, overrides: list[str], trainrun: str = "rx_statistical") -> str:
    sid = engine.create_session()
    engine.set_trainrun(sid, engine.resolve_config(sid, "trainrun", trainrun, overrides))
    return sid


SMALL = ["data.params.height=24", "data.params.width=24"]
# many tiny frames, one per batch: plenty of batches to cancel in between
LONG = [
    "data.batch_size=1",
    "data.params.height=8",
    "data.params.width=8",
    "data.params.num_frames=400",
    "data.train_ids=[" + ",".join(str(i) for i in range(400)) + "]",
    "data.val_ids=[]",
    "data.test_ids=[]",
]


def test_event_sequence_fits_nodes_in_topological_order(engine):
    sid = session_with(engine, SMALL)
    run = engine.train(sid, "statistical", None, None)
    events = list(run)
    statuses = [e.status for e in events]
    assert statuses.count("complete") == 1 and statuses[-1] == "complete"
    assert set(statuses[:-1]) == {"running"}
    assert run.error is None

    starts = [e.node for e in events if e.hook == "statistical_node_start"]
    ends = [e.node for e in events if e.hook == "statistical_node_end"]
    assert starts == ends == ["normalizer", "rx_detector", "logit"]
    progress = [e for e in events if e.hook == "statistical_progress"]
    train_frames = 6
    for node in starts:
        mine = [e for e in progress if e.node == node]
        assert [e.batch_idx for e in mine] == list(range(3))  # 6 frames, batch_size 2
        assert mine[-1].progress == (train_frames, train_frames)
        assert all(e.stage == "train" and e.split == "train" for e in mine)
    steps = [e.global_step for e in progress]
    assert steps == sorted(steps) and steps[-1] == 9
    assert engine.train_status(sid) is events[-1]


def test_rx_separates_anomalies_on_the_synthetic_test_split(engine):
    sid = session_with(engine, [])  # the shipped trainrun as is (64x64 frames)
    assert engine.train(sid, "statistical").events(timeout=120)[-1].status == "complete"
    dm = engine.build_datamodule(engine.session(sid).data_config)
    scores, labels = [], []
    for batch in dm.dataloader("test"):
        out = engine.infer(sid, batch, ["rx_detector.scores", "data.mask"]).tensors
        scores.append(out["rx_detector.scores"].flatten().numpy())
        labels.append(out["data.mask"].flatten().numpy())
    s, y = np.concatenate(scores), np.concatenate(labels)
    ranks = np.empty(len(s))
    ranks[np.argsort(s)] = np.arange(1, len(s) + 1)
    pos, neg = int(y.sum()), int((~y).sum())
    auc = (ranks[y].sum() - pos * (pos + 1) / 2) / (pos * neg)
    print(f"RX pixel ROC-AUC on the synthetic test split: {auc:.4f} ({pos} anomalous / {neg} normal pixels)")
    assert auc >= 0.95


def test_no_data_config_is_invalid_argument_mentioning_data(engine):
    sid = engine.create_session()
    engine.load_pipeline(sid, engine.resolve_config(sid, "pipeline", "rx_statistical", []))
    with pytest.raises(InvalidArgument, match="data"):
        engine.train(sid, "statistical", None, None)


def test_no_pipeline_and_bad_trainer_type(engine):
    sid = engine.create_session()
    with pytest.raises(FailedPrecondition):
        engine.train(sid, "statistical", {"batch_size": 1}, None)
    sid = session_with(engine, SMALL)
    with pytest.raises(InvalidArgument, match="trainer_type"):
        engine.train(sid, "unspecified", None, None)
    with pytest.raises(InvalidArgument, match=r"data\.batch_size"):
        engine.train(sid, "statistical", {"batch_size": 0}, None)


def test_request_data_overrides_the_session_data(engine):
    sid = session_with(engine, SMALL)
    data = {"batch_size": 3, "train_ids": [0, 1, 2], "params": {"height": 8, "width": 8, "num_frames": 3}}
    events = engine.train(sid, "statistical", data, None).events(timeout=120)
    progress = [e for e in events if e.hook == "statistical_progress" and e.node == "normalizer"]
    assert len(progress) == 1 and progress[0].progress == (3, 3)


def test_errors_end_with_one_error_event(engine):
    sid = session_with(engine, SMALL)
    run = engine.train(sid, "statistical", {"data_module": "no_such_module"}, None)
    events = list(run)
    assert [e.status for e in events].count("error") == 1 and events[-1].status == "error"
    assert "no_such_module" in events[-1].message
    assert isinstance(run.error, InvalidArgument)
    assert engine.train_status(sid).status == "error"
    # the session is usable again
    engine.load_pipeline(sid, engine.resolve_config(sid, "pipeline", "rx_statistical", []))


def test_empty_train_split_is_an_error_naming_the_ids(engine):
    sid = session_with(engine, [*SMALL, "data.train_ids=[]"])
    run = engine.train(sid, "statistical")
    assert list(run)[-1].status == "error"
    assert run.error is not None and "train_ids" in str(run.error)


def test_cancel_ends_with_cancelled_and_frees_the_session(engine):
    sid = session_with(engine, LONG)
    run = engine.train(sid, "statistical")
    seen = []
    requested = False
    reached = None
    for event in run:
        seen.append(event)
        if event.hook == "statistical_progress" and not requested:
            requested = True
            run.cancel("test stop")
            run.cancel("idempotent")
            # The trainer runs ahead of this reader (events queue up): where it was just after the
            # request is the latest event it produced, which the session keeps (no progress there when
            # it has already stopped).
            latest = engine.train_status(sid)
            assert latest is not None
            reached = latest.progress[0] if latest.progress is not None else None
    assert seen[-1].status == "cancelled" and "test stop" in seen[-1].message
    assert [e.status for e in seen].count("cancelled") == 1
    progress = [e for e in seen if e.hook == "statistical_progress"]
    assert requested and progress[-1].progress is not None
    # Stopped within a batch (one frame) of the request, far from the 400 frames asked for.
    if reached is not None:
        assert progress[-1].progress[0] <= reached + 1
    assert progress[-1].progress[0] < 400
    assert run.error is None
    assert engine.train_status(sid).status == "cancelled"
    engine.load_pipeline(sid, engine.resolve_config(sid, "pipeline", "rx_statistical", []))


def test_training_lock_and_stop_train(engine):
    sid = session_with(engine, LONG)
    run = engine.train(sid, "statistical")
    try:
        pipeline_cfg = engine.resolve_config(sid, "pipeline", "rx_statistical", [])
        for call in (
            lambda: engine.load_pipeline(sid, pipeline_cfg),
            lambda: engine.load_weights(sid, None, b"x", True),
            lambda: engine.set_trainrun(sid, {"name": "x"}),
            lambda: engine.train(sid, "statistical"),
        ):
            with pytest.raises(FailedPrecondition, match="training in progress"):
                call()
        engine.pipeline_outputs(sid)  # reads are allowed while training
        result = engine.stop_train(sid)
        stopped, message = result.accepted, result.message
        assert stopped, message
    finally:
        run.cancel()
    events = run.events(timeout=60)
    assert events[-1].status == "cancelled"
    stopped = engine.stop_train(sid)
    assert (stopped.accepted, stopped.message) == (False, "no training is running in this session")
    engine.load_pipeline(sid, pipeline_cfg)


def test_closing_a_session_cancels_its_run(engine):
    sid = session_with(engine, LONG)
    run = engine.train(sid, "statistical")
    engine.close_session(sid)
    assert run.join(60)
    assert run.terminal_event is not None and run.terminal_event.status == "cancelled"


def test_two_phase_statistical_then_inference_on_the_same_session(engine):
    sid = session_with(engine, SMALL)
    for _ in range(2):  # training twice is fine: the second run refits
        assert engine.train(sid, "statistical").events(timeout=120)[-1].status == "complete"
    out = engine.infer(sid, {"cube": torch.zeros(1, 4, 4, 61, dtype=torch.uint16)}, ["decisions"]).tensors
    assert out["decider.decisions"].shape == (1, 4, 4, 1)
