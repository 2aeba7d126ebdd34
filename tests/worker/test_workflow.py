"""The seeds' statistical workflow through a real gRPC channel to a ``cuvis-worker`` process."""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import numpy as np
import pytest
from helpers.cuvis import (
    SMALL_DATA,
    cube_batch,
    load_pipeline,
    pipeline_of,
    resolve,
    set_trainrun,
    synthetic_frame,
    train,
)

from cuvis_cluster.wire import codec
from cuvis_cluster.wire.pb import pb

pytestmark = pytest.mark.integration

WANTED = ["decider.decisions", "scores", "logit.logits"]


def _outputs(reply: pb.InferenceResponse) -> dict[str, np.ndarray]:
    return {name: codec.decode(tensor).copy() for name, tensor in reply.outputs.items()}


def test_statistical_workflow_then_reload_reproduces_outputs_bit_for_bit(stub, worker):
    # 1. CreateSession
    session_id = stub.CreateSession(pb.CreateSessionRequest()).session_id
    assert session_id

    # 2. ResolveConfig trainrun/rx_statistical with overrides (documented paths + a name-addressed node param)
    trainrun = resolve(
        stub,
        session_id,
        "trainrun",
        "trainrun/rx_statistical",
        [*SMALL_DATA, "training.seed=7", "pipeline.nodes.rx_detector.hparams.eps=0.0001"],
    )
    assert trainrun["data"]["batch_size"] == 2
    assert trainrun["data"]["splits"]["train"][0]["ids"] == [0, 1, 2, 3]
    assert trainrun["training"]["seed"] == 7
    rx = next(node for node in pipeline_of(trainrun)["nodes"] if node["name"] == "rx_detector")
    assert rx["hparams"]["eps"] == pytest.approx(1e-4)

    # 3. SetTrainRunConfig builds the inline pipeline
    reply = set_trainrun(stub, session_id, trainrun)
    assert reply.success and reply.pipeline_from_config

    # 4. Train STATISTICAL: RUNNING messages with context, then exactly one COMPLETE at the end
    events = train(stub, session_id)
    statuses = [e.status for e in events]
    assert statuses.count(pb.TRAIN_STATUS_COMPLETE) == 1 and statuses[-1] == pb.TRAIN_STATUS_COMPLETE
    assert set(statuses[:-1]) == {pb.TRAIN_STATUS_RUNNING}
    assert all(e.context.stage == pb.EXECUTION_STAGE_TRAIN for e in events)
    fitted = [e.event.node for e in events if e.event.hook == pb.TRAIN_HOOK_STATISTICAL_NODE_END]
    assert fitted == ["normalizer", "rx_detector", "logit"]  # topological order
    status = stub.GetTrainStatus(pb.GetTrainStatusRequest(session_id=session_id)).latest_progress
    assert status.status == pb.TRAIN_STATUS_COMPLETE

    # 5. Inference with output_specs: full names and bare port names filter the outputs
    frame = synthetic_frame()
    first = stub.Inference(
        pb.InferenceRequest(session_id=session_id, inputs=cube_batch(frame), output_specs=WANTED)
    )
    assert set(first.outputs) == {"decider.decisions", "rx_detector.scores", "logit.logits"}
    scores = codec.decode(first.outputs["rx_detector.scores"])
    assert scores.shape == (1, 32, 32, 1) and scores.dtype == np.float32
    assert codec.decode(first.outputs["decider.decisions"]).dtype == np.bool_
    # the anomalies of the frame score higher than the normal pixels
    anomalous = np.isin(frame["mask"], (2, 3))
    assert anomalous.any() and scores[0, ..., 0][anomalous].mean() > scores[0, ..., 0][~anomalous].mean()

    # 6. SavePipeline writes YAML + co-located .pt under the output root
    saved = stub.SavePipeline(
        pb.SavePipelineRequest(
            session_id=session_id,
            pipeline_path="runs/rx/pipeline.yaml",
            metadata=pb.PipelineMetadata(name="rx-test", tags=["saved"], author="tests"),
        )
    )
    assert saved.success
    yaml_path, weights_path = Path(saved.pipeline_path), Path(saved.weights_path)
    assert yaml_path.is_file() and weights_path.is_file()
    assert weights_path.parent == yaml_path.parent and weights_path.stem == yaml_path.stem
    assert yaml_path.is_relative_to(Path(worker.argv[worker.argv.index("--output-dir") + 1]))

    # 7. CloseSession; the id is gone afterwards
    assert stub.CloseSession(pb.CloseSessionRequest(session_id=session_id)).success
    with pytest.raises(grpc.RpcError) as info:
        stub.Inference(pb.InferenceRequest(session_id=session_id, inputs=cube_batch(frame)))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND

    # A new session: LoadPipeline (the saved YAML) + LoadPipelineWeights (the saved .pt) -> identical outputs
    second = stub.CreateSession(pb.CreateSessionRequest()).session_id
    try:
        import yaml

        pipeline = yaml.safe_load(yaml_path.read_text())
        loaded = load_pipeline(stub, second, pipeline)
        assert (
            loaded.success and loaded.metadata.name == "rx-test" and list(loaded.metadata.tags) == ["saved"]
        )
        with pytest.raises(grpc.RpcError) as info:  # RX is not fitted until the weights arrive
            stub.Inference(
                pb.InferenceRequest(session_id=second, inputs=cube_batch(frame), output_specs=WANTED)
            )
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        weights = stub.LoadPipelineWeights(
            pb.LoadPipelineWeightsRequest(
                session_id=second, weights_bytes=weights_path.read_bytes(), strict=True
            )
        )
        assert weights.success
        again = stub.Inference(
            pb.InferenceRequest(session_id=second, inputs=cube_batch(frame), output_specs=WANTED)
        )
        before, after = _outputs(first), _outputs(again)
        assert before.keys() == after.keys()
        for name in before:
            assert before[name].tobytes() == after[name].tobytes(), name
    finally:
        stub.CloseSession(pb.CloseSessionRequest(session_id=second))


def test_pipeline_introspection_reports_concrete_specs(stub, trained_session):
    inputs = stub.GetPipelineInputs(pb.GetPipelineInputsRequest(session_id=trained_session))
    assert "cube" in inputs.input_names
    cube = inputs.input_specs["cube"]
    assert cube.required and cube.dtype != pb.D_TYPE_UNSPECIFIED and len(cube.shape) == 4
    outputs = stub.GetPipelineOutputs(pb.GetPipelineOutputsRequest(session_id=trained_session))
    assert "decider.decisions" in outputs.output_names
    assert all(spec.dtype != pb.D_TYPE_UNSPECIFIED for spec in outputs.output_specs.values())
    assert all(-1 in spec.shape or spec.shape for spec in outputs.output_specs.values())


def test_concurrent_inference_on_one_session_gives_identical_results(stub, trained_session):
    from concurrent.futures import ThreadPoolExecutor

    batch = cube_batch(synthetic_frame(7))
    request = pb.InferenceRequest(session_id=trained_session, inputs=batch, output_specs=["scores"])
    with ThreadPoolExecutor(6) as pool:
        replies = list(pool.map(lambda _: stub.Inference(request, timeout=120), range(12)))
    payloads = {reply.outputs["rx_detector.scores"].raw_data for reply in replies}
    assert len(payloads) == 1


def test_extra_inputs_and_prompts_are_accepted_and_ignored(stub, trained_session):
    batch = cube_batch(synthetic_frame(7))
    batch.text_prompt = "stones"
    batch.bboxes.boxes.add(element_id=0, x_min=1, y_min=1, x_max=5, y_max=5)
    batch.points.points.add(element_id=0, x=2, y=3, type=pb.POINT_TYPE_POSITIVE)
    batch.extra_inputs["aux"].CopyFrom(codec.encode(np.zeros((2, 2), np.float32)))
    plain = stub.Inference(
        pb.InferenceRequest(
            session_id=trained_session, inputs=cube_batch(synthetic_frame(7)), output_specs=["scores"]
        )
    )
    extra = stub.Inference(
        pb.InferenceRequest(session_id=trained_session, inputs=batch, output_specs=["scores"])
    )
    assert extra.outputs["rx_detector.scores"].raw_data == plain.outputs["rx_detector.scores"].raw_data


def test_discovery_without_a_session(stub):
    listed = stub.ListAvailablePipelines(pb.ListAvailablePipelinesRequest())
    paths = {p.pipeline_path for p in listed.pipelines}
    assert any(path.startswith("rx_statistical") for path in paths)
    tagged = stub.ListAvailablePipelines(pb.ListAvailablePipelinesRequest(filter_tag="RX"))
    assert tagged.pipelines and all("rx" in [t.lower() for t in p.metadata.tags] for p in tagged.pipelines)
    info = stub.GetPipelineInfo(pb.GetPipelineInfoRequest(pipeline_path="rx_statistical.yaml")).pipeline_info
    assert "RXGlobal" in info.yaml_content
    schema = json.loads(
        stub.GetParameterSchema(pb.GetParameterSchemaRequest(config_type="training")).json_schema
    )
    assert "optimizer" in json.dumps(schema)
    caps = stub.GetTrainingCapabilities(pb.GetTrainingCapabilitiesRequest())
    assert "adam" in [o.lower() for o in caps.supported_optimizers]
    nodes = stub.ListAvailableNodes(pb.ListAvailableNodesRequest())
    rx = next(n for n in nodes.nodes if n.class_name == "RXGlobal")
    assert rx.category == pb.NODE_CATEGORY_MODEL and pb.NODE_TAG_HYPERSPECTRAL in rx.tags
    assert "data" in rx.input_specs and "scores" in rx.output_specs


def test_validate_config_reports_problems_in_the_reply(stub):
    bad = stub.ValidateConfig(
        pb.ValidateConfigRequest(
            config_type="training", config_bytes=b'{"optimizer": {"name": "adam", "lr": -1}}'
        )
    )
    assert not bad.valid and any("lr" in e for e in bad.errors)
