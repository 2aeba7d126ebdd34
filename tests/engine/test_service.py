"""The Engine facade: search paths, pipelines, weights, discovery, train runs, inference, confinement."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pytest
import torch
import yaml

from cuvis_cluster.engine.facade import Engine
from cuvis_cluster.engine.types import PipelineMetadata
from cuvis_cluster.errors import FailedPrecondition, InvalidArgument, NotFound, PermissionDenied

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "configs"
C = 61


def cube(b: int = 1, h: int = 8, w: int = 8, c: int = C, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(b, h, w, c, generator=g) * 4000).to(torch.uint16)


def trained_session(engine: Engine) -> str:
    sid = engine.create_session()
    cfg = engine.resolve_config(
        sid, "trainrun", "trainrun/rx_statistical", ["data.params.height=16", "data.params.width=16"]
    )
    assert engine.set_trainrun(sid, cfg) is True
    events = engine.train(sid, "statistical", None, None).events(timeout=120)
    assert events[-1].status == "complete"
    return sid


@pytest.fixture
def trained(engine):
    return trained_session(engine)


# -- sessions and search paths --------------------------------------------------------------------------
def test_unknown_session_is_not_found(engine):
    for call in (
        lambda: engine.infer("nope", {"cube": cube()}, []),
        lambda: engine.pipeline_inputs("nope"),
        lambda: engine.close_session("nope"),
        lambda: engine.train("nope", "statistical"),
        lambda: engine.save_pipeline("nope", "x", None),
    ):
        with pytest.raises(NotFound):
            call()


def test_search_paths_append_replace_and_rejections(engine, tmp_path):
    sid = engine.create_session()
    extra = tmp_path / "outputs" / "cfgs"
    extra.mkdir(parents=True)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    result = engine.set_search_paths(
        sid, [str(extra), str(outside), str(tmp_path / "outputs" / "missing")], append=True
    )
    current, rejected = list(result.current), list(result.rejected)
    assert current == [str(CONFIGS.resolve()), str(extra.resolve())]
    assert rejected == [str(outside), str(tmp_path / "outputs" / "missing")]
    result = engine.set_search_paths(sid, [str(CONFIGS / "trainrun")], append=False)
    current, rejected = list(result.current), list(result.rejected)
    assert current == [str((CONFIGS / "trainrun").resolve())] and rejected == []
    # the group directory as search path: cross-group defaults still compose
    resolved = engine.resolve_config(sid, "trainrun", "rx_statistical", [])
    assert resolved["data"]["data_module"] == "lentils_synthetic"


def test_search_paths_are_per_session(engine, tmp_path):
    a, b = engine.create_session(), engine.create_session()
    mine = tmp_path / "outputs" / "mine" / "data"
    mine.mkdir(parents=True)
    (mine / "special.yaml").write_text("batch_size: 5\n")
    engine.set_search_paths(a, [str(mine.parent)], append=True)
    assert engine.resolve_config(a, "data", "data/special", [])["batch_size"] == 5
    with pytest.raises(NotFound):
        engine.resolve_config(b, "data", "data/special", [])


def test_symlinked_search_path_out_of_the_roots_is_rejected(engine, tmp_path):
    sid = engine.create_session()
    outside = tmp_path / "secret"
    outside.mkdir()
    link = tmp_path / "outputs" / "link"
    link.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(outside, link)
    rejected = list(engine.set_search_paths(sid, [str(link)], append=True).rejected)
    assert rejected == [str(link)]


# -- configs --------------------------------------------------------------------------------------------
def test_parameter_schema_and_validate_config(engine):
    assert "optimizer" in engine.parameter_schema("training")["properties"]
    with pytest.raises(NotFound):
        engine.parameter_schema("nope")
    result = engine.validate_config(
        "training", json.dumps({"optimizer": {"name": "adam", "lr": 0.01}}).encode()
    )
    ok, errors = result.valid, list(result.errors)
    assert ok and errors == []
    result = engine.validate_config("training", b'{"optimizer": {"name": "adam", "lr": -0.001}}')
    ok, errors = result.valid, list(result.errors)
    assert not ok and any("lr" in e for e in errors)
    result = engine.validate_config("training", b'{"optimizer": {"name": "invalid_opt"}}')
    ok, errors = result.valid, list(result.errors)
    assert not ok and any("optimizer.name" in e for e in errors)
    result = engine.validate_config("training", b'{"trainer": {"max_epochs": 0}}')
    ok, errors = result.valid, list(result.errors)
    assert not ok
    result = engine.validate_config("pipeline", b'{"nodes": [{"name": "x", "type": "NoSuchNode"}]}')
    ok, errors = result.valid, list(result.errors)
    assert not ok and any("NoSuchNode" in e for e in errors)
    result = engine.validate_config("data", b"{not json")
    ok, errors = result.valid, list(result.errors)
    assert not ok and errors


# -- pipelines ------------------------------------------------------------------------------------------
def test_inference_before_load_pipeline_is_failed_precondition(engine):
    sid = engine.create_session()
    with pytest.raises(FailedPrecondition):
        engine.infer(sid, {"cube": cube()}, [])
    with pytest.raises(FailedPrecondition):
        engine.pipeline_outputs(sid)


def test_load_pipeline_returns_metadata_and_replaces(engine):
    sid = engine.create_session()
    rx = engine.resolve_config(sid, "pipeline", "pipeline/rx_statistical", [])
    meta = engine.load_pipeline(sid, json.dumps(rx).encode())
    assert meta.name == "rx_statistical" and "anomaly" in meta.tags
    svdd = engine.resolve_config(sid, "pipeline", "pipeline/deep_svdd", [])
    engine.load_pipeline(sid, svdd)
    assert any(s.name == "projection.embeddings" for s in engine.pipeline_outputs(sid))


@pytest.mark.parametrize("payload", [b"", b"   ", b"{bad json", b"[1, 2]", b"{}"])
def test_load_pipeline_with_empty_or_malformed_bytes(engine, payload):
    sid = engine.create_session()
    with pytest.raises(InvalidArgument):
        engine.load_pipeline(sid, payload)


def test_specs(engine, trained):
    inputs = {s.name: s for s in engine.pipeline_inputs(trained)}
    assert inputs["cube"].required and inputs["cube"].dtype in ("float32", "uint16")
    assert all(d == -1 for d in inputs["cube"].shape)
    outputs = {s.name: s for s in engine.pipeline_outputs(trained)}
    assert outputs["decider.decisions"].dtype == "bool"


# -- inference ------------------------------------------------------------------------------------------
def test_inference_outputs_and_filters(engine, trained):
    tensors = engine.infer(trained, {"cube": cube()}, []).tensors
    assert tensors["decider.decisions"].shape == (1, 8, 8, 1)
    assert tensors["decider.decisions"].dtype == torch.bool  # bool stays a tensor
    assert all(t.device.type == "cpu" for t in tensors.values())
    only = engine.infer(trained, {"cube": cube()}, ["decisions"]).tensors
    assert list(only) == ["decider.decisions"]
    full = engine.infer(trained, {"cube": cube()}, ["rx_detector.scores", "logits"]).tensors
    assert set(full) == {"rx_detector.scores", "logit.logits"}
    with pytest.raises(InvalidArgument, match="output_specs"):
        engine.infer(trained, {"cube": cube()}, ["no_such_output"])


def test_inference_input_errors_name_the_input(engine, trained):
    with pytest.raises(InvalidArgument, match=r"inputs\.cube: expected 61 channels, got 60"):
        engine.infer(trained, {"cube": cube(c=60)}, [])
    with pytest.raises(InvalidArgument, match=r"inputs\.cube"):
        engine.infer(trained, {"cube": cube()[0]}, [])
    with pytest.raises(InvalidArgument, match=r"inputs\.cube"):
        engine.infer(trained, {"cube": cube().bool()}, [])
    with pytest.raises(InvalidArgument, match=r"inputs\.cube: missing required input"):
        engine.infer(trained, {}, [])


def test_extra_inputs_are_accepted_and_ignored(engine, trained):
    plain = engine.infer(trained, {"cube": cube()}, ["scores"]).tensors
    extra = engine.infer(
        trained,
        {
            "cube": cube(),
            "wavelengths": torch.linspace(430, 910, C).to(torch.int32).reshape(1, C),
            "bboxes": [{"x_min": 0, "y_min": 0, "x_max": 2, "y_max": 2, "class_id": 1}],
            "points": [{"x": 1.0, "y": 2.0, "type": "positive"}],
            "text_prompt": "normal: lentils, anomaly: stones",
            "frame_id": torch.tensor([3]),
            "depth": torch.zeros(1, 8, 8),
        },
        ["scores"],
    ).tensors
    assert torch.equal(plain["rx_detector.scores"], extra["rx_detector.scores"])


def test_scalar_outputs_go_to_metrics(engine):
    sid = engine.create_session()
    cfg = engine.resolve_config(None, "pipeline", "pipeline/deep_svdd", [])
    engine.load_pipeline(sid, cfg)
    # untrained Deep SVDD: the z-score needs fitting first, so fit on a few frames via statistical training
    run = engine.train(
        sid,
        "statistical",
        {
            "data_module": "lentils_synthetic",
            "batch_size": 2,
            "train_ids": [0, 1],
            "params": {"height": 16, "width": 16, "num_frames": 2},
        },
        None,
    )
    assert run.events(timeout=120)[-1].status == "complete"
    wl = torch.arange(430, 911, 8, dtype=torch.int32).reshape(1, C)
    result = engine.infer(sid, {"cube": cube(), "wavelengths": wl}, [])
    tensors, metrics = result.tensors, result.metrics
    assert "center.center" in tensors
    assert metrics and all(isinstance(v, float) for v in metrics.values())
    assert any(k.startswith("center/") for k in metrics)


def test_concurrent_inference_on_one_session(engine, trained):
    from concurrent.futures import ThreadPoolExecutor

    batch = {"cube": cube(seed=3)}
    expected = engine.infer(trained, batch, ["scores"]).tensors
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: engine.infer(trained, batch, ["scores"]).tensors, range(8)))
    assert all(torch.equal(r["rx_detector.scores"], expected["rx_detector.scores"]) for r in results)


# -- save / load / weights ------------------------------------------------------------------------------
def test_save_and_reload_gives_bit_identical_outputs(engine, trained, tmp_path):
    result = engine.save_pipeline(trained, "exp/deep/rx", PipelineMetadata(author="me", tags=("saved",)))
    yaml_path, pt_path = result.pipeline_path, result.weights_path
    assert Path(yaml_path) == (tmp_path / "outputs" / "exp" / "deep" / "rx.yaml").resolve()
    assert Path(pt_path) == Path(yaml_path).with_suffix(".pt")
    saved = yaml.safe_load(Path(yaml_path).read_text())
    assert saved["metadata"]["author"] == "me" and saved["metadata"]["tags"] == ["saved"]
    payload = torch.load(pt_path, weights_only=True)
    assert set(payload) == {"state_dict", "metadata"} and "rx_detector" in payload["state_dict"]

    batch = {"cube": cube(seed=5)}
    before = engine.infer(trained, batch, []).tensors
    other = engine.create_session()
    engine.load_pipeline(other, Path(yaml_path).read_bytes())
    assert engine.load_weights(other, "exp/deep/rx", None, True) == pt_path  # .pt added, found under outputs
    after = engine.infer(other, batch, []).tensors
    assert before.keys() == after.keys()
    for key in before:
        assert torch.equal(before[key], after[key]), key
    # the same through client bytes
    third = engine.create_session()
    engine.load_pipeline(third, Path(yaml_path).read_bytes())
    assert engine.load_weights(third, None, Path(pt_path).read_bytes(), True) == ""
    assert torch.equal(
        engine.infer(third, batch, ["scores"]).tensors["rx_detector.scores"], before["rx_detector.scores"]
    )


@pytest.mark.parametrize("path", ["../escape", "a/../../escape", "/tmp/cuvis-engine-test-outside"])
def test_save_paths_are_confined_to_the_output_root(engine, trained, path):
    with pytest.raises(PermissionDenied):
        engine.save_pipeline(trained, path, None)


def test_save_without_path_or_pipeline(engine, trained):
    with pytest.raises(InvalidArgument):
        engine.save_pipeline(trained, "", None)
    with pytest.raises(FailedPrecondition):
        engine.save_pipeline(engine.create_session(), "x", None)


def test_load_weights_errors(engine, trained, tmp_path):
    with pytest.raises(InvalidArgument):
        engine.load_weights(trained, None, None, True)
    with pytest.raises(NotFound):
        engine.load_weights(trained, "does/not/exist.pt", None, True)
    outside = tmp_path / "outside.pt"
    torch.save({"state_dict": {}, "metadata": {}}, outside)
    with pytest.raises(PermissionDenied):
        engine.load_weights(trained, str(outside), None, True)
    with pytest.raises(PermissionDenied):
        engine.load_weights(trained, "../outside.pt", None, True)
    link = tmp_path / "outputs" / "link.pt"
    link.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(outside, link)
    with pytest.raises(PermissionDenied):
        engine.load_weights(trained, "link.pt", None, True)
    with pytest.raises(FailedPrecondition):
        engine.load_weights(engine.create_session(), None, b"x", True)


class Evil:
    pass


def test_client_weight_bytes_are_never_unpickled(engine, trained):
    buf = io.BytesIO()
    torch.save({"state_dict": {"rx_detector": {}}, "metadata": {}, "x": Evil()}, buf)
    with pytest.raises(InvalidArgument, match="weights_only"):
        engine.load_weights(trained, None, buf.getvalue(), False)


def test_strict_weights_via_engine(engine, trained):
    result = engine.save_pipeline(trained, "strict/rx", None)
    yaml_path, pt_path = result.pipeline_path, result.weights_path
    payload = torch.load(pt_path, weights_only=True)
    del payload["state_dict"]["logit"]
    buf = io.BytesIO()
    torch.save(payload, buf)
    other = engine.create_session()
    engine.load_pipeline(other, Path(yaml_path).read_bytes())
    with pytest.raises(
        InvalidArgument,
        match=r"missing keys: logit\.scale, logit\.bias|missing keys: logit\.bias, logit\.scale",
    ):
        engine.load_weights(other, None, buf.getvalue(), True)
    engine.load_weights(other, None, buf.getvalue(), False)


# -- discovery ------------------------------------------------------------------------------------------
def test_list_pipelines_and_tags(engine):
    entries = {e.pipeline_path: e for e in engine.list_pipelines(None)}
    assert {"rx_statistical.yaml", "channel_selector.yaml", "deep_svdd.yaml"} <= set(entries)
    rx = entries["rx_statistical.yaml"]
    assert Path(rx.resolved_path).is_file() and rx.metadata.name == "rx_statistical"
    assert {e.pipeline_path for e in engine.list_pipelines("DEEP_SVDD")} == {"deep_svdd.yaml"}
    assert len(engine.list_pipelines("anomaly")) >= 3
    assert engine.list_pipelines("no-such-tag") == []


def test_pipeline_info(engine):
    info = engine.pipeline_info("rx_statistical.yaml")
    assert "RXGlobal" in info.yaml_content and info.metadata.name == "rx_statistical"
    with pytest.raises(NotFound):
        engine.pipeline_info("nope.yaml")
    for bad in (
        "../trainrun/rx_statistical.yaml",
        "/etc/passwd.yaml",
        str(CONFIGS / "pipeline" / "rx_statistical.yaml"),
        "rx_statistical",
        "",
    ):
        with pytest.raises(InvalidArgument):
            engine.pipeline_info(bad)


# -- train-run configs ----------------------------------------------------------------------------------
def test_set_trainrun_variants(engine):
    sid = engine.create_session()
    with pytest.raises(InvalidArgument):
        engine.set_trainrun(sid, b"")
    with pytest.raises(FailedPrecondition):
        engine.set_trainrun(sid, {"name": "x", "data": {"batch_size": 1}})
    # a pipeline by path reference is built
    assert (
        engine.set_trainrun(sid, {"name": "x", "pipeline": "rx_statistical", "data": {"batch_size": 1}})
        is True
    )
    assert engine.session(sid).data_config["batch_size"] == 1
    # without a pipeline the loaded one stays
    assert engine.set_trainrun(sid, {"name": "y", "data": {"batch_size": 3}}) is False
    assert engine.session(sid).data_config["batch_size"] == 3
    with pytest.raises(InvalidArgument, match=r"training\.optimizer\.lr"):
        engine.set_trainrun(sid, {"training": {"optimizer": {"lr": 5}}})


def test_save_and_restore_trainrun(engine, trained):
    result = engine.save_trainrun(trained, "runs/rx_run", True)
    trainrun_path, pipeline_path, weights_path = (
        result.trainrun_path,
        result.pipeline_path,
        result.weights_path,
    )
    assert Path(pipeline_path).name == "rx_run_pipeline.yaml" and Path(weights_path).name == "rx_run.pt"
    saved = yaml.safe_load(Path(trainrun_path).read_text())
    assert saved["pipeline"] == "rx_run_pipeline.yaml" and saved["data"]["data_module"] == "lentils_synthetic"

    result = engine.restore_trainrun("runs/rx_run", "runs/rx_run.pt", True, None, "me")
    new_sid, config = result.session_id, result.config
    assert new_sid != trained and engine.session(new_sid).owner == "me"
    # canonical: the pipeline is a path (the resolved pipeline under the output root), as upstream requires
    assert Path(config["pipeline"]).is_file() and Path(config["pipeline"]).parent.name == "resolved"
    batch = {"cube": cube(seed=11)}
    a = engine.infer(trained, batch, []).tensors
    b = engine.infer(new_sid, batch, []).tensors
    assert all(torch.equal(a[k], b[k]) for k in a)
    # into an existing session
    existing = engine.create_session()
    assert engine.restore_trainrun(trainrun_path, weights_path, True, existing, None).session_id == existing
    with pytest.raises(NotFound):
        engine.restore_trainrun("runs/missing", None, True, None, None)
    with pytest.raises(NotFound):
        engine.restore_trainrun("runs/rx_run", "runs/missing.pt", True, None, None)
    assert engine.sessions.count == 3  # failed restores leave no session behind
