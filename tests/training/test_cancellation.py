"""Cancellation: a client that breaks out of the Train stream, and StopTrain, both free the session fast."""

from __future__ import annotations

import threading

import grpc
import pytest
from trainlib import GRADIENT, frame, infer, prepared, rpc_code, set_trainrun, status, train, wait_status

from cuvis_cluster.wire.pb import pb

pytestmark = pytest.mark.integration

LONG_RUN = ["training.trainer.max_epochs=200", "training.callbacks.early_stopping=[]"]


def test_client_breaking_out_of_the_stream_cancels_the_run(stub, session):
    trainrun = prepared(stub, session, "channel_selector", LONG_RUN)
    # The seeds' early-stopping pattern: iterate and simply break; nothing else tells the server.
    for seen, _reply in enumerate(
        stub.Train(pb.TrainRequest(session_id=session, trainer_type=GRADIENT), timeout=300)
    ):
        if seen == 7:
            break
    reply, waited = wait_status(stub, session, pb.TRAIN_STATUS_CANCELLED, timeout=60.0)
    print(f"\nGetTrainStatus reported CANCELLED {waited:.2f}s after the client broke out")
    assert reply.status == pb.TRAIN_STATUS_CANCELLED, pb.TrainStatus.Name(reply.status)
    assert "cancel" in reply.message

    # The session takes new calls at once, mutating ones included.
    assert set_trainrun(stub, session, {**trainrun, "pipeline": None}).success
    assert "logit.logits" in infer(stub, session, [frame(6)], ["logit.logits"])
    short = {**trainrun["training"], "max_epochs": 1}
    assert train(stub, session, GRADIENT, training=short)[-1].status == pb.TRAIN_STATUS_COMPLETE


def test_stop_train_cancels_within_a_batch_and_status_is_live(stub, session):
    trainrun = prepared(stub, session, "channel_selector", LONG_RUN)
    assert stub.StopTrain(pb.StopTrainRequest(session_id=session)).accepted is False  # nothing running

    events: list = []
    errors: list = []
    enough = threading.Event()

    def consume() -> None:
        try:
            for reply in stub.Train(pb.TrainRequest(session_id=session, trainer_type=GRADIENT), timeout=300):
                events.append(reply)
                if len(events) >= 6:
                    enough.set()
        except grpc.RpcError as exc:
            errors.append(exc)
        finally:
            enough.set()

    reader = threading.Thread(target=consume, daemon=True)
    reader.start()
    assert enough.wait(120), "the run produced no progress"

    # GetTrainStatus from another call while the run goes: the real latest progress, with context.
    live = status(stub, session)
    assert live.status == pb.TRAIN_STATUS_RUNNING
    assert live.context.stage in (pb.EXECUTION_STAGE_TRAIN, pb.EXECUTION_STAGE_VAL)
    assert live.HasField("event") and live.event.epochs.total == 200
    # Mutating calls are refused while it trains.
    assert rpc_code(lambda: set_trainrun(stub, session, {**trainrun, "pipeline": None})) == (
        grpc.StatusCode.FAILED_PRECONDITION
    )

    stopped = stub.StopTrain(pb.StopTrainRequest(session_id=session))
    assert stopped.accepted and stopped.message
    reply, waited = wait_status(stub, session, pb.TRAIN_STATUS_CANCELLED, timeout=60.0)
    print(f"\nGetTrainStatus reported CANCELLED {waited:.2f}s after StopTrain returned")
    assert reply.status == pb.TRAIN_STATUS_CANCELLED
    # Cancelled mid-run: the last context is far from the 200 epochs asked for (the time it took is a
    # figure for bench/trainer_bench.py, not an assertion here).
    assert reply.context.epoch < 199
    reader.join(30)
    assert not reader.is_alive()
    assert events[-1].status == pb.TRAIN_STATUS_CANCELLED
    assert [e.status for e in events].count(pb.TRAIN_STATUS_CANCELLED) == 1
    assert errors and errors[0].code() == grpc.StatusCode.CANCELLED

    assert set_trainrun(stub, session, {**trainrun, "pipeline": None}).success
    assert "logit.logits" in infer(stub, session, [frame(7)], ["logit.logits"])
