"""Regression tests for review findings: override interpolations, user errors that became INTERNAL,
calls racing a Train run, file modes of saved files and required pipeline inputs."""

from __future__ import annotations

import copy
import os
import stat
import threading
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch
import yaml

from cuvis_cluster.engine import configs
from cuvis_cluster.engine.facade import Engine, EngineConfig
from cuvis_cluster.engine.nodes.base import Node, NodeRegistry, Port
from cuvis_cluster.engine.nodes.visualization import FalseRGBVisualizer, ScoreHeatmapVisualizer
from cuvis_cluster.engine.pipeline import Pipeline
from cuvis_cluster.errors import FailedPrecondition, InvalidArgument, ResourceExhausted

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "configs"
C = 61


def pipeline_config(name: str) -> dict[str, Any]:
    return yaml.safe_load((CONFIGS / "pipeline" / f"{name}.yaml").read_text())


def cube(b: int = 1, h: int = 8, w: int = 8, c: int = C) -> torch.Tensor:
    return (torch.rand(b, h, w, c, generator=torch.Generator().manual_seed(0)) * 4000).to(torch.uint16)


SMALL = ["data.params.height=16", "data.params.width=16"]
# many tiny frames, one per batch: a statistical run that lasts long enough to act on while it runs
LONG = [
    "data.batch_size=1",
    "data.params.height=8",
    "data.params.width=8",
    "data.params.num_frames=400",
    "data.train_ids=[" + ",".join(str(i) for i in range(400)) + "]",
    "data.val_ids=[]",
    "data.test_ids=[]",
]


def session_with(engine: Engine, overrides: list[str]) -> str:
    sid = engine.create_session()
    engine.set_trainrun(sid, engine.resolve_config(sid, "trainrun", "trainrun/rx_statistical", overrides))
    return sid


@pytest.fixture
def trained(engine):
    sid = session_with(engine, SMALL)
    assert engine.train(sid, "statistical").events(timeout=120)[-1].status == "complete"
    return sid


# -- 1. interpolations in overrides -------------------------------------------------------------------
@pytest.mark.parametrize(
    "override",
    [
        "metadata.name=${oc.env:HOME}",
        "metadata.name='${oc.env:HOME}'",
        "metadata.description=x${oc.decode:'{a: 1}'}",
        "++metadata.author=${oc.env:CUVIS_TEST_SECRET,fallback}",
        "nodes.rx_detector.params.eps=${oc.env:CUVIS_TEST_SECRET}",
    ],
)
def test_interpolation_in_an_override_is_refused_without_leaking(engine, monkeypatch, override):
    monkeypatch.setenv("CUVIS_TEST_SECRET", "s3cret-value")
    sid = engine.create_session()
    with pytest.raises(InvalidArgument) as info:
        engine.resolve_config(sid, "pipeline", "rx_statistical", ["metadata.tags=[a]", override])
    assert "overrides[1]: interpolations are not allowed in overrides" in info.value.message
    assert info.value.field == "overrides.1"
    for secret in ("s3cret-value", os.environ["HOME"]):
        assert secret not in info.value.message


def test_interpolation_in_an_override_key_is_refused(engine):
    with pytest.raises(InvalidArgument, match=r"overrides\[0\]: interpolations"):
        engine.resolve_config(None, "trainrun", "trainrun/rx_statistical", ["${oc.env:HOME}=1"])


def test_relative_interpolations_in_config_files_still_resolve(tmp_path):
    root = tmp_path / "cfg"
    (root / "pipeline").mkdir(parents=True)
    data = pipeline_config("rx_statistical")
    data["metadata"]["description"] = "${.name} detector"  # relative: sibling key
    (root / "pipeline" / "interp.yaml").write_text(yaml.safe_dump(data))
    resolved = configs.resolve("pipeline", "interp", ["metadata.name=renamed"], [root], [root])
    assert resolved["metadata"]["description"] == "renamed detector"


# -- 2a. zero-size dims ---------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(0, 8, 8, C), (1, 0, 8, C), (1, 8, 0, C)])
def test_zero_size_cube_is_invalid_argument_naming_the_input(engine, trained, shape):
    with pytest.raises(InvalidArgument) as info:
        engine.infer(trained, {"cube": torch.zeros(shape, dtype=torch.uint16)}, [])
    assert info.value.field == "inputs.cube" and "empty dimension" in info.value.message


def test_visualizers_handle_empty_batches():
    heat = ScoreHeatmapVisualizer()(scores=torch.rand(0, 4, 4, 1))["image"]
    assert heat.shape == (0, 4, 4, 3) and heat.dtype == torch.uint8
    assert ScoreHeatmapVisualizer()(scores=torch.rand(1, 0, 4, 1))["image"].shape == (1, 0, 4, 3)
    assert FalseRGBVisualizer()(cube=torch.rand(0, 4, 4, 5))["image"].shape == (0, 4, 4, 3)
    assert FalseRGBVisualizer()(cube=torch.rand(1, 4, 0, 5))["image"].shape == (1, 4, 0, 3)
    with pytest.raises(InvalidArgument, match="no channels"):
        FalseRGBVisualizer()(cube=torch.rand(1, 4, 4, 0))


# -- 2b. non-UTF-8 config bytes -------------------------------------------------------------------------
def test_non_utf8_config_bytes_are_invalid_argument(engine):
    sid = engine.create_session()
    bad = b"\xff\xfe"
    for call in (lambda: engine.load_pipeline(sid, bad), lambda: engine.set_trainrun(sid, bad)):
        with pytest.raises(InvalidArgument) as info:
            call()
        assert info.value.field == "config" and "UTF-8" in info.value.message
    for kind in ("pipeline", "trainrun"):
        result = engine.validate_config(kind, b"\xff\xfe{}")
        valid, errors = result.valid, list(result.errors)
        assert valid is False and errors and "UTF-8" in errors[0]


# -- 2c. huge node params ---------------------------------------------------------------------------------
def _with_param(name: str, node: str, param: str, value: Any) -> dict[str, Any]:
    cfg = copy.deepcopy(pipeline_config(name))
    entry = next(n for n in cfg["nodes"] if n["name"] == node)
    entry["hparams"][param] = value
    return cfg


@pytest.mark.parametrize(
    ("pipeline", "node", "param", "value", "bound"),
    [
        ("rx_statistical", "rx_detector", "num_channels", 10**12, 4096),
        ("deep_svdd", "projection", "in_channels", 100_000, 4096),
        ("deep_svdd", "projection", "hidden", 100_000, 8192),
        ("deep_svdd", "projection", "rep_dim", 100_000, 8192),
        ("deep_svdd", "projection", "n_rff", 10**9, 65536),
        ("deep_svdd", "center", "rep_dim", 10**9, 8192),
        ("deep_svdd", "zscore", "num_channels", 10**9, 4096),
        ("channel_selector", "channel_selector", "input_channels", 10**12, 4096),
    ],
)
def test_huge_node_params_are_invalid_argument_naming_node_and_param(
    engine, pipeline, node, param, value, bound
):
    sid = engine.create_session()
    with pytest.raises(InvalidArgument) as info:
        engine.load_pipeline(sid, _with_param(pipeline, node, param, value))
    text = info.value.message
    assert repr(node) in text and param in text and f"<= {bound}" in text


def test_params_at_the_bounds_still_build():
    cfg = _with_param("deep_svdd", "projection", "hidden", 8192)
    pipeline = Pipeline.from_config(cfg, NodeRegistry())
    assert pipeline.node("projection").params["hidden"] == 8192


class _Hungry(Node):
    """A node whose construction asks the allocator for far more memory than any machine has."""

    INPUTS: ClassVar[dict[str, Port]] = {"cube": Port("float32", ("B", "H", "W", "C"))}
    OUTPUTS: ClassVar[dict[str, Port]] = {"out": Port("float32", ("B", "H", "W", "C"))}

    def __init__(self, elements: int = 2**45) -> None:
        super().__init__(elements=elements)
        self.register_buffer("big", torch.empty(int(elements)))

    def forward(self, **inputs: Any) -> dict[str, Any]:  # pragma: no cover - never built
        return {"out": inputs["cube"]}


def test_allocation_failure_while_building_is_resource_exhausted():
    registry = NodeRegistry()
    registry.add(_Hungry, "test")
    hungry = f"{_Hungry.__module__}.{_Hungry.__qualname__}"
    cfg = {"metadata": {"name": "hungry"}, "nodes": [{"name": "greedy", "class_name": hungry, "hparams": {}}]}
    with pytest.raises(ResourceExhausted) as info:
        Pipeline.from_config(cfg, registry)
    assert "greedy" in info.value.message and "memory" in info.value.message


# -- 2d. save_pipeline paths that name no file ------------------------------------------------------------
@pytest.mark.parametrize("path", [".", "", "/", "..", "./", "sub", "sub/", "sub/.."])
def test_save_pipeline_to_a_non_file_path_is_invalid_argument(engine, trained, path):
    (engine.output_dir / "sub").mkdir(parents=True, exist_ok=True)
    with pytest.raises(InvalidArgument) as info:
        engine.save_pipeline(trained, path, None)
    assert info.value.field == "pipeline_path"


# -- 3. calls while a Train runs ------------------------------------------------------------------------
def test_inference_and_saves_while_training_are_failed_precondition(engine, trained):
    ready = engine.resolve_config(trained, "trainrun", "trainrun/rx_statistical", LONG)
    engine.set_trainrun(trained, ready)
    run = engine.train(trained, "statistical")
    try:
        for call in (
            lambda: engine.infer(trained, {"cube": cube()}, []),
            lambda: engine.save_pipeline(trained, "during.yaml", None),
            lambda: engine.save_trainrun(trained, "during_run.yaml", True),
        ):
            with pytest.raises(FailedPrecondition, match="training in progress"):
                call()
        assert not (engine.output_dir / "during.yaml").exists()
        assert engine.train_status(trained) is not None  # status still answers
        stopped = engine.stop_train(trained).accepted
        assert stopped
    finally:
        run.cancel()
    assert run.events(timeout=60)[-1].status == "cancelled"
    # the session is free again: a complete run, then inference and saving work
    engine.set_trainrun(trained, engine.resolve_config(trained, "trainrun", "trainrun/rx_statistical", SMALL))
    assert engine.train(trained, "statistical").events(timeout=120)[-1].status == "complete"
    tensors = engine.infer(trained, {"cube": cube()}, ["scores"]).tensors
    assert tensors
    assert Path(engine.save_pipeline(trained, "after.yaml", None).pipeline_path).is_file()


def test_close_session_while_training_works(engine):
    sid = session_with(engine, LONG)
    run = engine.train(sid, "statistical")
    engine.close_session(sid)
    assert run.join(60)


def test_train_trains_the_pipeline_the_session_holds_despite_a_racing_load(engine):
    sid = session_with(engine, LONG)
    pipeline_cfg = engine.resolve_config(sid, "pipeline", "rx_statistical", [])
    for _ in range(15):
        stop = threading.Event()

        def loader(stop: threading.Event = stop) -> None:
            while not stop.is_set():
                try:
                    engine.load_pipeline(sid, pipeline_cfg)
                except FailedPrecondition:
                    pass

        thread = threading.Thread(target=loader)
        thread.start()
        try:
            run = engine.train(sid, "statistical")
        finally:
            stop.set()
            thread.join(30)
        try:
            # whatever LoadPipeline won the race, the run fits the pipeline Inference will use later
            assert run.ctx.pipeline is engine.session(sid).pipeline
        finally:
            run.cancel()
            assert run.join(60)


# -- 4. file modes ---------------------------------------------------------------------------------------
def test_saved_files_are_readable_by_others_as_umask_allows(engine, trained):
    mask = os.umask(0o022)
    try:
        result = engine.save_pipeline(trained, "shared/rx.yaml", None)
        yaml_path, pt_path = result.pipeline_path, result.weights_path
        saved_run = engine.save_trainrun(trained, "shared/run.yaml", True)
        run_paths = (saved_run.trainrun_path, saved_run.pipeline_path, saved_run.weights_path)
    finally:
        os.umask(mask)
    for path in (yaml_path, pt_path, *run_paths):
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o644, path


# -- 5. required inputs ------------------------------------------------------------------------------------
def test_pass_through_input_needed_downstream_is_required(engine):
    sid = engine.create_session()
    engine.load_pipeline(sid, pipeline_config("deep_svdd"))
    specs = {s.name: s.required for s in engine.pipeline_inputs(sid)}
    assert specs["cube"] is True
    assert specs["wavelengths"] is True  # HyperspectralInput passes it to BandpassByWavelength
    assert specs["mask"] is False  # only the metrics node (not in INFERENCE) needs it
    engine.load_pipeline(sid, pipeline_config("rx_statistical"))
    assert {s.name: s.required for s in engine.pipeline_inputs(sid)}["wavelengths"] is False


def test_env_interpolation_in_a_saved_file_is_not_resolved(tmp_path, monkeypatch):
    """A client can write `${oc.env:...}` into a file under the output root; resolving it must not leak."""
    monkeypatch.setenv("CUVIS_TEST_SECRET", "hunter2")
    out = tmp_path / "out"
    (out / "pipeline").mkdir(parents=True)
    (out / "pipeline" / "leak.yaml").write_text(
        "metadata: {name: '${oc.env:CUVIS_TEST_SECRET}'}\nnodes: []\nconnections: []\n"
    )
    configs = Path(__file__).resolve().parents[2] / "configs"
    engine = Engine(
        EngineConfig(configs_dir=configs, data_dir=tmp_path, output_dir=out, plugin_dirs=[], extra_roots=[])
    )
    try:
        sid = engine.create_session()
        engine.set_search_paths(sid, [str(out)], append=True)
        with pytest.raises(InvalidArgument) as info:
            engine.resolve_config(sid, "pipeline", "pipeline/leak", [])
        assert "hunter2" not in str(info.value)
        assert "oc.env" in str(info.value)
    finally:
        engine.shutdown()
