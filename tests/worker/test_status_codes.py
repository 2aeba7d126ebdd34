"""Every status code issue 3 names, observed by a real client of a real ``cuvis-worker``."""

from __future__ import annotations

import io
import json
import os
import stat
import threading
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch
from helpers import procs
from helpers.cuvis import (
    SMALL_DATA,
    cube_batch,
    load_pipeline,
    pipeline_of,
    resolve,
    set_trainrun,
    statistically_trained,
    synthetic_frame,
    train,
    train_frames,
)

from cuvis_cluster.wire import codec
from cuvis_cluster.wire.pb import pb, pb_grpc

pytestmark = pytest.mark.integration

UNKNOWN = "00000000-0000-4000-8000-000000000000"


def rpc_error(call, *args, **kwargs) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        result = call(*args, **kwargs)
        if hasattr(result, "__next__"):
            list(result)  # drain a stream
    return info.value


# ------------------------------------------------------------------------------------------------ NOT_FOUND


@pytest.mark.parametrize(
    ("method", "request_"),
    [
        ("CloseSession", pb.CloseSessionRequest(session_id=UNKNOWN)),
        ("Inference", pb.InferenceRequest(session_id=UNKNOWN)),
        ("GetPipelineInputs", pb.GetPipelineInputsRequest(session_id=UNKNOWN)),
        ("SavePipeline", pb.SavePipelineRequest(session_id=UNKNOWN, pipeline_path="x.yaml")),
        ("LoadPlugin", pb.LoadPluginRequest(session_id=UNKNOWN)),
        ("GetTrainStatus", pb.GetTrainStatusRequest(session_id=UNKNOWN)),
        ("Train", pb.TrainRequest(session_id=UNKNOWN, trainer_type=pb.TRAINER_TYPE_STATISTICAL)),
    ],
)
def test_unknown_session_is_not_found(stub, method, request_):
    error = rpc_error(getattr(stub, method), request_)
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert UNKNOWN in error.details()


def test_closed_session_is_not_found(stub):
    session_id = stub.CreateSession(pb.CreateSessionRequest()).session_id
    assert stub.CloseSession(pb.CloseSessionRequest(session_id=session_id)).success
    error = rpc_error(stub.CloseSession, pb.CloseSessionRequest(session_id=session_id))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    error = rpc_error(stub.GetPipelineInputs, pb.GetPipelineInputsRequest(session_id=session_id))
    assert error.code() == grpc.StatusCode.NOT_FOUND


def test_missing_config_file_is_not_found(stub, session):
    error = rpc_error(
        stub.ResolveConfig,
        pb.ResolveConfigRequest(session_id=session, config_type="trainrun", path="trainrun/does_not_exist"),
    )
    assert error.code() == grpc.StatusCode.NOT_FOUND


# -------------------------------------------------------------------------------------- FAILED_PRECONDITION


def test_inference_before_a_pipeline_is_failed_precondition(stub, session):
    error = rpc_error(
        stub.Inference, pb.InferenceRequest(session_id=session, inputs=cube_batch(synthetic_frame()))
    )
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_train_before_a_pipeline_fails_without_messages(stub, session):
    call = stub.Train(pb.TrainRequest(session_id=session, trainer_type=pb.TRAINER_TYPE_STATISTICAL))
    received = []
    with pytest.raises(grpc.RpcError) as info:
        for message in call:
            received.append(message)
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert received == []


def _long_trainrun(stub, session_id: str) -> dict:
    """A statistical run over thousands of tiny frames: long enough to act on while it runs."""
    trainrun = resolve(stub, session_id, "trainrun", "trainrun/rx_statistical", SMALL_DATA)
    trainrun["data"]["params"].update(num_frames=20000, height=16, width=16)
    train_frames(trainrun, 20000)
    return trainrun


def test_mutating_calls_while_training_are_failed_precondition_then_stop_train_cancels(stub, session):
    trainrun = _long_trainrun(stub, session)
    assert set_trainrun(stub, session, trainrun).pipeline_from_config
    stream = stub.Train(
        pb.TrainRequest(session_id=session, trainer_type=pb.TRAINER_TYPE_STATISTICAL), timeout=300
    )
    first = next(stream)
    assert first.status == pb.TRAIN_STATUS_RUNNING

    pipeline = pipeline_of(trainrun)
    calls = {
        "LoadPipeline": lambda: load_pipeline(stub, session, pipeline),
        "SetTrainRunConfig": lambda: set_trainrun(stub, session, trainrun),
        "LoadPipelineWeights": lambda: stub.LoadPipelineWeights(
            pb.LoadPipelineWeightsRequest(session_id=session, weights_bytes=b"not used")
        ),
        "Train": lambda: list(
            stub.Train(pb.TrainRequest(session_id=session, trainer_type=pb.TRAINER_TYPE_STATISTICAL))
        ),
        # the statistical trainer fits buffers in place: no answers (or files) from a half-fitted model
        "Inference": lambda: _infer(stub, session, cube_batch(synthetic_frame(size=8))),
        "SavePipeline": lambda: stub.SavePipeline(
            pb.SavePipelineRequest(session_id=session, pipeline_path="during_training.yaml")
        ),
        "SaveTrainRun": lambda: stub.SaveTrainRun(
            pb.SaveTrainRunRequest(session_id=session, trainrun_path="during_training_run.yaml")
        ),
    }
    for name, call in calls.items():
        error = rpc_error(call)
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION, name
        assert "training in progress" in error.details(), name
    # reads stay allowed while training
    assert stub.GetPipelineOutputs(pb.GetPipelineOutputsRequest(session_id=session)).output_names
    status = stub.GetTrainStatus(pb.GetTrainStatusRequest(session_id=session)).latest_progress
    assert status.status == pb.TRAIN_STATUS_RUNNING

    stopped = stub.StopTrain(pb.StopTrainRequest(session_id=session))
    assert stopped.accepted
    rest = []
    with pytest.raises(grpc.RpcError) as info:
        for message in stream:
            rest.append(message)
    assert info.value.code() == grpc.StatusCode.CANCELLED
    assert rest and rest[-1].status == pb.TRAIN_STATUS_CANCELLED
    assert [m.status for m in rest].count(pb.TRAIN_STATUS_CANCELLED) == 1
    # the session is free again
    assert load_pipeline(stub, session, pipeline).success
    assert not stub.StopTrain(pb.StopTrainRequest(session_id=session)).accepted


def test_client_cancelling_train_frees_the_session(stub, session):
    trainrun = _long_trainrun(stub, session)
    set_trainrun(stub, session, trainrun)
    stream = stub.Train(
        pb.TrainRequest(session_id=session, trainer_type=pb.TRAINER_TYPE_STATISTICAL), timeout=300
    )
    assert next(stream).status == pb.TRAIN_STATUS_RUNNING
    stream.cancel()

    def session_free():
        try:
            return load_pipeline(stub, session, pipeline_of(trainrun)).success
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.FAILED_PRECONDITION
            return False

    procs.wait_for(session_free, timeout=30, interval=0.2, what="the cancelled run to release the session")
    status = stub.GetTrainStatus(pb.GetTrainStatusRequest(session_id=session)).latest_progress
    assert status.status == pb.TRAIN_STATUS_CANCELLED


# ------------------------------------------------------------------------------------------ INVALID_ARGUMENT


@pytest.fixture(scope="module")
def trained(stub):
    session_id = stub.CreateSession(pb.CreateSessionRequest()).session_id
    statistically_trained(stub, session_id)
    yield session_id
    stub.CloseSession(pb.CloseSessionRequest(session_id=session_id))


def _infer(stub, session_id, batch, specs=()):
    return stub.Inference(pb.InferenceRequest(session_id=session_id, inputs=batch, output_specs=list(specs)))


def test_bad_tensor_is_invalid_argument_naming_the_field(stub, trained):
    batch = pb.InputBatch(cube=pb.Tensor(shape=[1, 4, 4, 61], dtype=pb.D_TYPE_FLOAT32, raw_data=b"\0" * 100))
    error = rpc_error(_infer, stub, trained, batch)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "inputs.cube" in error.details() and "100 bytes" in error.details()

    batch = pb.InputBatch(cube=pb.Tensor(shape=[1, 4, 4, 61], raw_data=b"\0" * 976))  # dtype unset
    error = rpc_error(_infer, stub, trained, batch)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "inputs.cube" in error.details()


def test_missing_required_input_is_invalid_argument_naming_it(stub, trained):
    error = rpc_error(_infer, stub, trained, pb.InputBatch())
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "inputs.cube" in error.details()


def test_wrong_channel_count_is_invalid_argument_naming_the_input(stub, trained):
    cube = np.zeros((1, 8, 8, 10), np.float32)
    error = rpc_error(_infer, stub, trained, pb.InputBatch(cube=codec.encode(cube)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "inputs.cube" in error.details() and "61" in error.details()


def test_unknown_output_spec_is_invalid_argument(stub, trained):
    error = rpc_error(_infer, stub, trained, cube_batch(synthetic_frame()), ["no_such_output"])
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "output_specs" in error.details()


def test_malformed_request_body_is_invalid_argument_not_internal(worker):
    channel = worker.channel()
    raw_call = channel.unary_unary("/cuvis_ai.v1.CuvisAIService/CreateSession")
    with pytest.raises(grpc.RpcError) as info:
        raw_call(b"\xff\xff\xff", timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    inference = channel.unary_unary("/cuvis_ai.v1.CuvisAIService/Inference")
    with pytest.raises(grpc.RpcError) as info:
        inference(b"\x12\x05\x12\x03\x0a\x01", timeout=10)  # truncated nested message
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_bad_config_is_invalid_argument_with_the_field_path(stub, session):
    error = rpc_error(
        resolve, stub, session, "trainrun", "trainrun/rx_statistical", [*SMALL_DATA, "data.batch_size=-3"]
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "data.batch_size" in error.details()


def test_bad_pipeline_is_invalid_argument_naming_node_and_port(stub, session):
    pipeline = {
        "metadata": {"name": "broken"},
        "nodes": [
            {"name": "norm", "type": "MinMaxNormalizer", "params": {}},
            {"name": "rx", "type": "RXGlobal", "params": {"num_channels": 61}},
        ],
        "connections": [{"source": "norm.no_such_port", "target": "rx.data"}],
    }
    error = rpc_error(load_pipeline, stub, session, pipeline)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "norm" in error.details() and "no_such_port" in error.details()
    error = rpc_error(
        stub.LoadPipeline,
        pb.LoadPipelineRequest(session_id=session, pipeline=pb.PipelineConfig(config_bytes=b"{")),
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_train_without_data_or_trainer_type_is_invalid_argument(stub, session):
    trainrun = resolve(stub, session, "trainrun", "trainrun/rx_statistical", SMALL_DATA)
    load_pipeline(stub, session, pipeline_of(trainrun))
    error = rpc_error(train, stub, session)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "data" in error.details()
    error = rpc_error(train, stub, session, pb.TRAINER_TYPE_UNSPECIFIED)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "trainer_type" in error.details()


def test_weights_request_without_a_source_is_invalid_argument(stub, trained):
    error = rpc_error(stub.LoadPipelineWeights, pb.LoadPipelineWeightsRequest(session_id=trained))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "weights_source" in error.details()


def test_strict_weights_list_missing_and_unexpected_keys(stub, trained, session):
    saved = stub.SavePipeline(pb.SavePipelineRequest(session_id=trained, pipeline_path="strict/rx.yaml"))
    payload = torch.load(saved.weights_path, weights_only=True)
    state = payload["state_dict"]
    assert "rx_detector" in state
    del state["rx_detector"]
    state["ghost"] = {"w": torch.zeros(1)}
    buffer = io.BytesIO()
    torch.save(payload, buffer)

    trainrun = resolve(stub, session, "trainrun", "trainrun/rx_statistical", SMALL_DATA)
    load_pipeline(stub, session, pipeline_of(trainrun))
    request = pb.LoadPipelineWeightsRequest(session_id=session, weights_bytes=buffer.getvalue(), strict=True)
    error = rpc_error(stub.LoadPipelineWeights, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "rx_detector" in error.details() and "ghost" in error.details()
    request.strict = False
    assert stub.LoadPipelineWeights(request).success

    garbage = pb.LoadPipelineWeightsRequest(session_id=session, weights_bytes=b"definitely not a .pt file")
    assert rpc_error(stub.LoadPipelineWeights, garbage).code() == grpc.StatusCode.INVALID_ARGUMENT


# ---------------------------------------------------------------------------------------- RESOURCE_EXHAUSTED


def test_sessions_beyond_the_maximum_are_resource_exhausted(tmp_path):
    worker = procs.start_worker(tmp_path, "--max-sessions", "2", "--device", "cpu")
    try:
        stub = pb_grpc.CuvisAIServiceStub(worker.channel())
        first = stub.CreateSession(pb.CreateSessionRequest()).session_id
        stub.CreateSession(pb.CreateSessionRequest())
        error = rpc_error(stub.CreateSession, pb.CreateSessionRequest())
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "2 sessions" in error.details()
        stub.CloseSession(pb.CloseSessionRequest(session_id=first))
        assert stub.CreateSession(pb.CreateSessionRequest()).session_id  # room again
        metrics = worker.metrics_text()
        labels = 'code="RESOURCE_EXHAUSTED",method="cuvis_ai.v1.CuvisAIService/CreateSession"'
        assert f"cuvis_worker_rpc_requests_total{{{labels}}} 1.0" in metrics
    finally:
        worker.stop()


# -------------------------------------------------------------------------------------------- concurrency


def test_concurrent_resolve_in_different_sessions_with_different_search_paths(stub, worker, tmp_path):
    out_dir = worker.argv[worker.argv.index("--output-dir") + 1]
    results: dict[int, dict] = {}
    errors: list[BaseException] = []
    sessions = []
    for i in range(8):
        root = Path(out_dir) / f"search{i}" / "data"
        root.mkdir(parents=True, exist_ok=True)
        (root / "mine.yaml").write_text(
            "data_module: lentils_synthetic\n"
            f"batch_size: {i + 1}\ntrain_ids: [0]\nparams: {{num_frames: 2}}\n"
        )
        session_id = stub.CreateSession(pb.CreateSessionRequest()).session_id
        sessions.append(session_id)
        reply = stub.SetSessionSearchPaths(
            pb.SetSessionSearchPathsRequest(
                session_id=session_id, search_paths=[str(root.parent)], append=False
            )
        )
        assert not reply.rejected_paths

    def work(i: int) -> None:
        try:
            for _ in range(3):
                resolved = resolve(stub, sessions[i], "data", "data/mine")
                assert resolved["batch_size"] == i + 1
            results[i] = resolved
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    try:
        assert not errors, errors
        assert {i: r["batch_size"] for i, r in results.items()} == {i: i + 1 for i in range(8)}
    finally:
        for session_id in sessions:
            stub.CloseSession(pb.CloseSessionRequest(session_id=session_id))


def test_search_paths_outside_the_roots_are_rejected(stub, session, tmp_path):
    reply = stub.SetSessionSearchPaths(
        pb.SetSessionSearchPathsRequest(session_id=session, search_paths=["/etc", str(tmp_path / "missing")])
    )
    assert reply.success
    assert set(reply.rejected_paths) == {"/etc", str(tmp_path / "missing")}
    assert json.dumps(list(reply.current_paths))


# ------------------------------------------------------------------------------------- more of issue 3's list


def test_trainrun_config_errors(stub, session):
    empty = pb.SetTrainRunConfigRequest(session_id=session, config=pb.TrainRunConfig(config_bytes=b""))
    assert rpc_error(stub.SetTrainRunConfig, empty).code() == grpc.StatusCode.INVALID_ARGUMENT
    trainrun = resolve(stub, session, "trainrun", "trainrun/rx_statistical", SMALL_DATA)
    del trainrun["pipeline"]
    error = rpc_error(set_trainrun, stub, session, trainrun)  # no pipeline in it and none loaded
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_schema_and_discovery_errors(stub):
    error = rpc_error(stub.GetParameterSchema, pb.GetParameterSchemaRequest(config_type="no_such_type"))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    for path in ("../etc/passwd.yaml", "/etc/passwd.yaml", "rx_statistical"):
        error = rpc_error(stub.GetPipelineInfo, pb.GetPipelineInfoRequest(pipeline_path=path))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, path
    error = rpc_error(stub.GetPipelineInfo, pb.GetPipelineInfoRequest(pipeline_path="missing.yaml"))
    assert error.code() == grpc.StatusCode.NOT_FOUND


# ------------------------------------------------------------------------------------------ review findings


def test_interpolation_in_an_override_is_invalid_argument_and_leaks_nothing(stub, session):
    for override in ("metadata.name=${oc.env:HOME}", "metadata.description=${oc.env:PATH}"):
        overrides = ["metadata.tags=[x]", override]
        error = rpc_error(resolve, stub, session, "pipeline", "rx_statistical", overrides)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "overrides[1]: interpolations are not allowed in overrides" in error.details()
    # a plain override still works
    plain = resolve(stub, session, "pipeline", "rx_statistical", ["metadata.name=plain"])
    assert plain["metadata"]["name"] == "plain"


def test_non_utf8_config_bytes_are_invalid_argument(stub, session):
    error = rpc_error(
        stub.LoadPipeline,
        pb.LoadPipelineRequest(session_id=session, pipeline=pb.PipelineConfig(config_bytes=b"\xff\xfe")),
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "config" in error.details()
    error = rpc_error(
        stub.SetTrainRunConfig,
        pb.SetTrainRunConfigRequest(session_id=session, config=pb.TrainRunConfig(config_bytes=b"\xff\xfe")),
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "config" in error.details()
    reply = stub.ValidateConfig(pb.ValidateConfigRequest(config_type="pipeline", config_bytes=b"\xff\xfe"))
    assert not reply.valid and any("UTF-8" in e for e in reply.errors)


@pytest.mark.parametrize("shape", [(0, 8, 8, 61), (1, 0, 8, 61)])
def test_zero_size_cube_is_invalid_argument(stub, trained, shape):
    batch = pb.InputBatch(cube=codec.encode(np.zeros(shape, np.float32)))
    error = rpc_error(_infer, stub, trained, batch)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "inputs.cube" in error.details()


def test_huge_node_params_are_invalid_argument(stub, session):
    pipeline = resolve(stub, session, "pipeline", "rx_statistical")
    rx = next(n for n in pipeline["nodes"] if n["class_name"].endswith(".RXGlobal"))
    rx["hparams"]["num_channels"] = 10**12
    error = rpc_error(load_pipeline, stub, session, pipeline)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert rx["name"] in error.details() and "num_channels" in error.details()


@pytest.mark.parametrize("path", [".", "/", "..", "strict"])
def test_save_pipeline_to_a_directory_is_invalid_argument(stub, trained, path):
    stub.SavePipeline(pb.SavePipelineRequest(session_id=trained, pipeline_path="strict/made.yaml"))
    error = rpc_error(stub.SavePipeline, pb.SavePipelineRequest(session_id=trained, pipeline_path=path))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "pipeline_path" in error.details()


def test_saved_files_are_not_private_to_the_worker(stub, trained):
    saved = stub.SavePipeline(pb.SavePipelineRequest(session_id=trained, pipeline_path="modes/rx.yaml"))
    mask = os.umask(0)  # the worker inherits this process's umask
    os.umask(mask)
    for path in (saved.pipeline_path, saved.weights_path):
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o666 & ~mask, oct(os.stat(path).st_mode)


def test_pipeline_inputs_mark_pass_through_inputs_required(stub, session):
    load_pipeline(stub, session, resolve(stub, session, "pipeline", "deep_svdd"))
    specs = stub.GetPipelineInputs(pb.GetPipelineInputsRequest(session_id=session)).input_specs
    assert specs["cube"].required and specs["wavelengths"].required and not specs["mask"].required
