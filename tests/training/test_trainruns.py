"""SaveTrainRun / RestoreTrainRun over the public API: exact reproduction, then training continues."""

from __future__ import annotations

from pathlib import Path

import grpc
import numpy as np
import pytest
import torch
import yaml
from trainlib import GRADIENT, frame, hooks, infer, prepared, rpc_code, train

from cuvis_cluster.wire.pb import pb

pytestmark = pytest.mark.integration


def test_save_with_weights_restore_in_fresh_session_reproduces_outputs_then_trains(
    stub, session, worker_dirs
):
    prepared(
        stub,
        session,
        "channel_selector",
        [
            "training.trainer.max_epochs=1",
            "training.optimizer.lr=0.01",
            "unfreeze_nodes=[channel_selector,logit]",
        ],
    )
    assert train(stub, session, GRADIENT)[-1].status == pb.TRAIN_STATUS_COMPLETE

    saved = stub.SaveTrainRun(
        pb.SaveTrainRunRequest(session_id=session, trainrun_path="runs/cs/run.yaml", save_weights=True)
    )
    assert saved.success
    trainrun_file, pipeline_file, weights_file = map(
        Path, (saved.trainrun_path, saved.pipeline_path, saved.weights_path)
    )
    assert pipeline_file.name == "run_pipeline.yaml" and weights_file.name == "run.pt"
    for path in (trainrun_file, pipeline_file, weights_file):
        assert path.is_file() and path.is_relative_to(worker_dirs["outputs"].resolve())
    stored = yaml.safe_load(trainrun_file.read_text())
    assert stored["pipeline"] == "run_pipeline.yaml" and stored["loss_nodes"] == [
        "bce",
        "entropy",
        "diversity",
    ]
    payload = torch.load(weights_file, weights_only=True)
    assert (
        set(payload) >= {"state_dict", "metadata"}
        and "channel_logits" in payload["state_dict"]["channel_selector"]
    )

    frames = [frame(6), frame(7)]
    original = infer(stub, session, frames)

    restored = stub.RestoreTrainRun(
        pb.RestoreTrainRunRequest(
            trainrun_path=saved.trainrun_path, weights_path=saved.weights_path, strict=True
        )
    )
    new_session = restored.session_id
    assert new_session and new_session != session
    try:
        again = infer(stub, new_session, frames)
        assert original.keys() == again.keys()
        for name in original:
            assert original[name].tobytes() == again[name].tobytes(), name

        # Training continues in the restored session from the restored state (its data/training came along).
        events = train(stub, new_session, GRADIENT)
        assert events[-1].status == pb.TRAIN_STATUS_COMPLETE
        assert len(hooks(events, pb.TRAIN_HOOK_EPOCH_END)) == 1
        moved = infer(stub, new_session, frames, ["channel_selector.weights"])["channel_selector.weights"]
        assert not np.array_equal(moved, original["channel_selector.weights"])
    finally:
        stub.CloseSession(pb.CloseSessionRequest(session_id=new_session))

    # Restore into an existing session (session_id given) works too, with a relative path.
    into = stub.RestoreTrainRun(
        pb.RestoreTrainRunRequest(
            trainrun_path="runs/cs/run.yaml", weights_path="runs/cs/run.pt", session_id=session
        )
    )
    assert into.session_id == session
    assert infer(stub, session, frames)["logit.logits"].tobytes() == original["logit.logits"].tobytes()


def test_trainrun_paths_are_confined(stub, session, outside_root):
    prepared(stub, session, "rx_statistical")
    outside = str(outside_root / "escape.yaml")
    for path in ("../escape.yaml", outside):
        code = rpc_code(
            lambda p=path: stub.SaveTrainRun(pb.SaveTrainRunRequest(session_id=session, trainrun_path=p))
        )
        assert code == grpc.StatusCode.PERMISSION_DENIED, path
    (outside_root / "planted.yaml").write_text("name: x\n")
    code = rpc_code(
        lambda: stub.RestoreTrainRun(
            pb.RestoreTrainRunRequest(trainrun_path=str(outside_root / "planted.yaml"))
        )
    )
    assert code == grpc.StatusCode.PERMISSION_DENIED
    code = rpc_code(
        lambda: stub.RestoreTrainRun(pb.RestoreTrainRunRequest(trainrun_path="runs/none/missing.yaml"))
    )
    assert code == grpc.StatusCode.NOT_FOUND
