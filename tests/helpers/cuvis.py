"""Client-side helpers for tests that drive ``cuvis_ai.v1.CuvisAIService`` (worker or gateway)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import yaml

from cuvis_cluster.wire import codec
from cuvis_cluster.wire.pb import pb

# Small synthetic frames keep statistical training to a second or two on a 2-core CPU.
SMALL_DATA = [
    "data.params.height=32",
    "data.params.width=32",
    "data.params.num_frames=8",
    "data.train_ids=[0,1,2,3]",
    "data.val_ids=[4,5]",
    "data.test_ids=[6,7]",
    "data.batch_size=2",
]


def resolve(stub, session_id: str, config_type: str, path: str, overrides=()) -> dict:
    reply = stub.ResolveConfig(
        pb.ResolveConfigRequest(
            session_id=session_id, config_type=config_type, path=path, overrides=list(overrides)
        )
    )
    return json.loads(reply.config_bytes)


def pipeline_of(trainrun: dict) -> dict:
    """The pipeline a resolved train run references: ResolveConfig writes it under the worker's output
    root and returns its path (the published TrainRunConfig holds a path); the tests' workers run here."""
    return yaml.safe_load(Path(trainrun["pipeline"]).read_text())


def train_frames(trainrun: dict, count: int) -> None:
    """Train on frames 0..count-1 and evaluate on none (published splits, upstream's dir_indices)."""
    trainrun["data"]["splits"] = {
        "train": [{"kind": "dir_indices", "ids": [f"0-{count - 1}"]}],
        "val": [],
        "test": [],
    }


def set_trainrun(stub, session_id: str, trainrun: dict) -> pb.SetTrainRunConfigResponse:
    return stub.SetTrainRunConfig(
        pb.SetTrainRunConfigRequest(
            session_id=session_id, config=pb.TrainRunConfig(config_bytes=json.dumps(trainrun).encode())
        )
    )


def train(stub, session_id: str, trainer=pb.TRAINER_TYPE_STATISTICAL, timeout: float = 300) -> list:
    return list(stub.Train(pb.TrainRequest(session_id=session_id, trainer_type=trainer), timeout=timeout))


def load_pipeline(stub, session_id: str, pipeline: dict) -> pb.LoadPipelineResponse:
    return stub.LoadPipeline(
        pb.LoadPipelineRequest(
            session_id=session_id, pipeline=pb.PipelineConfig(config_bytes=json.dumps(pipeline).encode())
        )
    )


def synthetic_frame(frame_id: int = 6, size: int = 32):
    """A synthetic Lentils frame as the engine's data source makes it (cube uint16 HWC, mask)."""
    from cuvis_cluster.engine.data.synthetic import generate_frame

    return generate_frame(frame_id, height=size, width=size, seed=0)


def cube_batch(frame, dtype=np.float32) -> pb.InputBatch:
    cube = np.asarray(frame["cube"], dtype=dtype)[None]
    wavelengths = np.asarray(frame["wavelengths"], dtype=np.float32)
    return pb.InputBatch(cube=codec.encode(cube), wavelengths=codec.encode(wavelengths))


def statistically_trained(stub, session_id: str, overrides=()) -> dict:
    """ResolveConfig trainrun/rx_statistical (small data) -> SetTrainRunConfig -> Train STATISTICAL."""
    trainrun = resolve(stub, session_id, "trainrun", "trainrun/rx_statistical", [*SMALL_DATA, *overrides])
    reply = set_trainrun(stub, session_id, trainrun)
    assert reply.success and reply.pipeline_from_config
    events = train(stub, session_id)
    assert events[-1].status == pb.TRAIN_STATUS_COMPLETE, events[-1].message
    return trainrun
