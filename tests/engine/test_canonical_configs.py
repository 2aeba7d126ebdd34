"""Every config the engine returns or writes validates under the published cuvis_ai_schemas models.

Also: our old dialect is still read (with a deprecation warning), the seeds' flow
(ResolveConfig with ``pipeline.nodes.<name>...`` overrides -> SetTrainRunConfig -> Train) works without
LoadPipeline, and upstream's own pipeline YAMLs parse through our config path.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import cuvis_ai
import pytest
import torch
import yaml
from cuvis_ai_schemas.pipeline import PipelineConfig
from cuvis_ai_schemas.training.config import TrainingConfig
from cuvis_ai_schemas.training.data import DataConfig
from cuvis_ai_schemas.training.run import TrainRunConfig
from hypothesis import given, settings
from hypothesis import strategies as st

from cuvis_cluster.engine import canonical, schemas
from cuvis_cluster.errors import InvalidArgument, PermissionDenied

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "configs"
UPSTREAM = Path(cuvis_ai.__file__).parent / "configs" / "pipeline"
PUBLISHED = {"pipeline": PipelineConfig, "data": DataConfig, "training": TrainingConfig}
SHIPPED = {kind: sorted(p.stem for p in (CONFIGS / kind).glob("*.yaml")) for kind in (*PUBLISHED, "trainrun")}
OVERRIDES = {
    "pipeline": ["nodes.data.hparams.normal_class_ids=[0]"],
    "data": ["batch_size=3", "data.train_ids=[0,1]"],
    "training": ["max_epochs=2", "training.trainer.max_epochs=3", "optimizer.lr=0.01"],
    "trainrun": [
        "pipeline.nodes.data.params.normal_class_ids=[0]",
        "training.max_epochs=2",
        "data.val_ids=[6]",
    ],
}
DEPRECATED = "deprecated config dialect"


def _deprecations(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if DEPRECATED in r.getMessage()]


def _assert_published(kind: str, config: dict) -> None:
    if kind == "trainrun":
        TrainRunConfig.model_validate(config)
        PipelineConfig.model_validate(yaml.safe_load(Path(config["pipeline"]).read_text()))
    else:
        PUBLISHED[kind].model_validate(config)


# -- ResolveConfig ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("with_overrides", [False, True])
@pytest.mark.parametrize(("kind", "name"), [(k, n) for k, names in SHIPPED.items() for n in names])
def test_every_shipped_config_resolves_to_the_published_form(engine, kind, name, with_overrides, caplog):
    overrides = OVERRIDES[kind] if with_overrides else []
    if kind == "pipeline" and "data" not in {
        n["name"] for n in yaml.safe_load((CONFIGS / kind / f"{name}.yaml").read_text())["nodes"]
    }:
        overrides = []
    with caplog.at_level(logging.WARNING):
        resolved = engine.resolve_config(None, kind, f"{kind}/{name}", overrides)
    _assert_published(kind, resolved)
    json.dumps(resolved)
    if not with_overrides:  # the shipped files are canonical: nothing to deprecate
        assert _deprecations(caplog) == []


@pytest.mark.parametrize("kind", ["pipeline", "data", "training"])
def test_shipped_files_validate_as_they_are(kind):
    for file in (CONFIGS / kind).glob("*.yaml"):
        PUBLISHED[kind].model_validate(yaml.safe_load(file.read_text()))


def test_resolved_pipeline_is_content_addressed_under_the_output_root(engine):
    a = engine.resolve_config(None, "trainrun", "trainrun/rx_statistical", [])
    b = engine.resolve_config(None, "trainrun", "trainrun/rx_statistical", [])
    c = engine.resolve_config(
        None, "trainrun", "trainrun/rx_statistical", ["pipeline.nodes.rx_detector.hparams.eps=0.01"]
    )
    assert a["pipeline"] == b["pipeline"] != c["pipeline"]
    ref = Path(c["pipeline"])
    assert ref.parent == engine.roots.output_dir / "resolved"
    pipeline = yaml.safe_load(ref.read_text())
    assert ref.name == f"pipeline-{canonical.content_hash(pipeline)[:16]}.yaml"
    rx = next(n for n in pipeline["nodes"] if n["name"] == "rx_detector")
    assert rx["class_name"] == "cuvis_ai.node.anomaly.rx_detector.RXGlobal" and rx["hparams"]["eps"] == 0.01


# -- the seeds' flow ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("spelling", ["hparams", "params"])
def test_resolve_set_trainrun_train_without_load_pipeline(engine, spelling):
    sid = engine.create_session()
    config = engine.resolve_config(
        sid,
        "trainrun",
        "trainrun/rx_statistical",
        [f"pipeline.nodes.rx_detector.{spelling}.eps=0.001", "data.params.height=16", "data.params.width=16"],
    )
    TrainRunConfig.model_validate(config)
    assert engine.set_trainrun(sid, json.dumps(config).encode()) is True
    events = engine.train(sid, "statistical", None, None).events(timeout=120)
    assert events[-1].status == "complete"
    pipeline = engine.session(sid).pipeline
    assert pipeline is not None and pipeline.node("rx_detector").params["eps"] == pytest.approx(0.001)
    out = engine.infer(sid, {"cube": (torch.rand(1, 8, 8, 61) * 4000).to(torch.uint16)}, []).tensors
    assert out["decider.decisions"].dtype == torch.bool


def test_set_trainrun_refuses_a_pipeline_path_outside_the_roots(engine, tmp_path):
    outside = tmp_path / "elsewhere" / "p.yaml"
    outside.parent.mkdir()
    outside.write_text((CONFIGS / "pipeline" / "rx_statistical.yaml").read_text())
    config = engine.resolve_config(None, "trainrun", "trainrun/rx_statistical", [])
    config["pipeline"] = str(outside)
    with pytest.raises(PermissionDenied):
        engine.set_trainrun(engine.create_session(), config)


@pytest.fixture
def trained(engine):
    sid = engine.create_session()
    config = engine.resolve_config(
        sid, "trainrun", "rx_statistical", ["data.params.height=16", "data.params.width=16"]
    )
    assert engine.set_trainrun(sid, config) is True
    assert engine.train(sid, "statistical", None, None).events(timeout=120)[-1].status == "complete"
    return sid


# -- what we write ------------------------------------------------------------------------------------------
def test_save_pipeline_and_save_trainrun_write_the_published_form(engine, trained):
    saved = engine.save_pipeline(trained, "saved/rx.yaml")
    pipeline = yaml.safe_load(Path(saved.pipeline_path).read_text())
    PipelineConfig.model_validate(pipeline)
    assert pipeline["plugins"] == ["cuvis_ai_builtin"]
    assert all(c["source"].split(".")[1] == "outputs" for c in pipeline["connections"])
    result = engine.save_trainrun(trained, "saved/run", True)
    trainrun = yaml.safe_load(Path(result.trainrun_path).read_text())
    TrainRunConfig.model_validate(trainrun)
    # upstream resolves the reference relative to the trainrun file
    assert (Path(result.trainrun_path).parent / trainrun["pipeline"]).resolve() == Path(result.pipeline_path)
    PipelineConfig.model_validate(yaml.safe_load(Path(result.pipeline_path).read_text()))
    restored = engine.restore_trainrun(result.trainrun_path, result.weights_path, True, None, None)
    TrainRunConfig.model_validate(restored.config)


def test_parameter_schema_is_the_published_one(engine):
    for kind, model in (*PUBLISHED.items(), ("trainrun", TrainRunConfig)):
        assert engine.parameter_schema(kind) == model.model_json_schema()


# -- the old dialect ----------------------------------------------------------------------------------------
def _old_dialect(pipeline: dict) -> dict:
    old = json.loads(json.dumps(pipeline))
    for node in old["nodes"]:
        node["type"] = node.pop("class_name").rsplit(".", 1)[-1]
        node["params"] = node.pop("hparams")
    for conn in old["connections"]:
        conn["source"] = conn["source"].replace(".outputs.", ".")
        conn["target"] = conn["target"].replace(".inputs.", ".")
    return old


def test_old_dialect_is_read_with_a_deprecation_and_written_canonical(engine, caplog):
    canonical_cfg = yaml.safe_load((CONFIGS / "pipeline" / "rx_statistical.yaml").read_text())
    sid = engine.create_session()
    with caplog.at_level(logging.WARNING):
        engine.load_pipeline(sid, json.dumps(_old_dialect(canonical_cfg)))
    assert len(_deprecations(caplog)) == 1 and "LoadPipeline" in _deprecations(caplog)[0]
    saved = yaml.safe_load(Path(engine.save_pipeline(sid, "old.yaml").pipeline_path).read_text())
    assert [n["class_name"] for n in saved["nodes"]] == [n["class_name"] for n in canonical_cfg["nodes"]]
    PipelineConfig.model_validate(saved)


def test_old_dialect_trainrun_with_inline_pipeline_still_sets(engine, caplog):
    old = {
        "name": "old_run",
        "pipeline": _old_dialect(yaml.safe_load((CONFIGS / "pipeline" / "rx_statistical.yaml").read_text())),
        "data": {
            "data_module": "lentils_synthetic",
            "train_ids": [0, 1],
            "params": {"height": 16, "width": 16},
        },
        "training": {"trainer": {"max_epochs": 1}},
        "tags": ["a"],
    }
    sid = engine.create_session()
    with caplog.at_level(logging.WARNING):
        assert engine.set_trainrun(sid, old) is True
    (message,) = _deprecations(caplog)
    assert "inline pipeline" in message and "train_ids" in message and "training.trainer" in message
    assert engine.train(sid, "statistical", None, None).events(timeout=120)[-1].status == "complete"
    result = engine.validate_config("trainrun", json.dumps(old))
    assert result.valid and any(w.startswith("deprecated:") for w in result.warnings)


# -- upstream's own files --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name", ["anomaly/rx/rx_statistical", "anomaly/rx/channel_selector", "anomaly/deep_svdd/deep_svdd"]
)
def test_upstream_pipeline_yaml_parses_and_stays_canonical(name, caplog):
    raw = yaml.safe_load((UPSTREAM / f"{name}.yaml").read_text())
    with caplog.at_level(logging.WARNING):
        canonical.warn_old_dialect("pipeline", raw)
    assert _deprecations(caplog) == []
    out = canonical.pipeline(raw)  # our config path: parse, then write back
    PipelineConfig.model_validate(out)
    assert [n["class_name"] for n in out["nodes"]] == [n["class_name"] for n in raw["nodes"]]
    assert out["connections"] == raw["connections"]
    assert [n["hparams"] for n in out["nodes"]] == [n.get("hparams") or {} for n in raw["nodes"]]


# -- the data mapping (frame ids <-> dir_indices selectors) -----------------------------------------------
ids = st.one_of(st.none(), st.lists(st.integers(min_value=0, max_value=10_000), max_size=20))


@settings(max_examples=80, deadline=None)
@given(train=ids, val=ids, test=ids, batch=st.integers(1, 64))
def test_frame_ids_round_trip_through_published_splits(train, val, test, batch):
    # None: the module's default share (the stage is left out); []: an empty split; else the frame ids
    ours = schemas.DataConfig(train_ids=train, val_ids=val, test_ids=test, batch_size=batch)
    out = canonical.data(ours)
    DataConfig.model_validate(out)
    back = schemas.validate("data", json.loads(json.dumps(out)))
    assert isinstance(back, schemas.DataConfig)
    assert (back.train_ids, back.val_ids, back.test_ids) == (train, val, test)
    assert back.batch_size == batch


@settings(max_examples=40, deadline=None)
@given(lo=st.integers(0, 50), span=st.integers(0, 50))
def test_upstream_range_ids_expand(lo, span):
    data = {
        "data_module": "npz",
        "splits": {"train": [{"kind": "dir_indices", "ids": [f"{lo}-{lo + span}"]}]},
    }
    back = schemas.validate("data", data)
    assert isinstance(back, schemas.DataConfig) and back.train_ids == list(range(lo, lo + span + 1))


@pytest.mark.parametrize("kind", ["glob", "tag"])
def test_selectors_our_data_modules_cannot_serve_are_refused_by_name(kind):
    selector = {"kind": kind, "pattern": "*.npz"} if kind == "glob" else {"kind": kind, "any_of": ["x"]}
    with pytest.raises(InvalidArgument, match=kind):
        schemas.validate("data", {"data_module": "npz", "splits": {"train": [selector]}}, "data")


def test_upstream_rx_statistical_loads_as_shipped_and_saves_back_the_same_graph(engine, caplog):
    text = (UPSTREAM / "anomaly" / "rx" / "rx_statistical.yaml").read_text()
    raw = yaml.safe_load(text)
    sid = engine.create_session()
    with caplog.at_level(logging.WARNING):
        assert engine.load_pipeline(sid, text).name == raw["metadata"]["name"]
    assert _deprecations(caplog) == []
    saved = yaml.safe_load(Path(engine.save_pipeline(sid, "upstream_rx.yaml").pipeline_path).read_text())
    PipelineConfig.model_validate(saved)
    assert [(n["name"], n["class_name"]) for n in saved["nodes"]] == [
        (n["name"], n["class_name"]) for n in raw["nodes"]
    ]
    assert saved["connections"] == raw["connections"] and saved["plugins"] == raw["plugins"]
