"""Upstream cuvis_ai node classes we do not implement, run inside our graph through the hosted adapter.

Pipelines here are built through ``Pipeline.from_config`` in the old dialect (``type``/``params``) until the
canonical loader lands; the class names are upstream's exact full names either way.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cuvis_cluster.engine.nodes.base import NodeRegistry, Stage
from cuvis_cluster.engine.nodes.hosted import HostedNode
from cuvis_cluster.engine.pipeline import Pipeline
from cuvis_cluster.errors import InvalidArgument

PCA = "cuvis_ai.node.dimensionality_reduction.TrainablePCA"
ZSCORE = "cuvis_ai.node.normalization.ZScoreNormalizer"
TENSORBOARD = "cuvis_ai.node.monitor.TensorBoardMonitorNode"


def _cube(seed: int = 0, b: int = 2, c: int = 6) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 5, 7, c, generator=g) * torch.linspace(0.5, 3.0, c)


def _pipeline(registry: NodeRegistry) -> Pipeline:
    config = {
        "metadata": {"name": "hosted"},
        "nodes": [
            {"name": "z", "type": ZSCORE, "params": {}},
            {"name": "pca", "type": PCA, "params": {"num_channels": 6, "n_components": 3}},
        ],
        "connections": [{"source": "z.normalized", "target": "pca.data"}],
    }
    return Pipeline.from_config(config, registry, extra_inputs=["data"])


def test_ports_and_metadata_come_from_upstream_specs() -> None:
    from cuvis_ai.node.dimensionality_reduction import TrainablePCA

    cls = NodeRegistry().get(PCA)
    assert issubclass(cls, HostedNode) and cls.UPSTREAM is TrainablePCA
    assert set(cls.INPUTS) == set(TrainablePCA.INPUT_SPECS) and set(cls.OUTPUTS) == set(
        TrainablePCA.OUTPUT_SPECS
    )
    assert cls.INPUTS["data"].dtype == "float32" and len(cls.INPUTS["data"].shape) == 4
    assert cls.OUTPUTS["components"].optional
    assert cls.has_statistical_init() and cls.has_learnable_params()
    assert cls.CATEGORY == "model" and "learnable" in cls.TAGS
    assert not NodeRegistry().get(ZSCORE).has_statistical_init()


def test_statistical_fit_matches_upstream_on_the_same_data() -> None:
    from cuvis_ai.node.dimensionality_reduction import TrainablePCA

    cubes = [_cube(1), _cube(2)]
    node = NodeRegistry().create(PCA, "pca", {"num_channels": 6, "n_components": 3})
    with pytest.raises(Exception, match="statistical"):
        node(data=cubes[0])
    node.fit({"data": x} for x in cubes)
    ours = node(data=cubes[0])["projected"]

    reference = TrainablePCA(num_channels=6, n_components=3)
    reference.statistical_initialization({"data": x} for x in cubes)
    theirs = reference(data=cubes[0])["projected"]
    assert torch.equal(ours, theirs)
    # C4: the upstream module's own keys, no wrapper prefix.
    assert list(node.state_dict()) == list(reference.state_dict())


def test_pipeline_fit_train_freeze_and_state_round_trip(tmp_path: Path) -> None:
    registry = NodeRegistry(output_root=tmp_path)
    pipe = _pipeline(registry)
    assert pipe.statistical_nodes() == ["pca"]
    batches = [{"data": _cube(3)}, {"data": _cube(4)}]
    pipe.nodes["pca"].fit(pipe.node_inputs("pca", b) for b in batches)
    before = pipe.forward(batches[0])["pca.projected"].clone()

    pca = pipe.nodes["pca"]
    pca.unfreeze()
    params = [p for p in pca.parameters() if p.requires_grad]
    assert params, "unfreeze must expose the upstream TRAINABLE_BUFFERS to the optimiser"
    optimiser = torch.optim.SGD(params, lr=0.1)
    pca.train()
    loss = pipe.forward(batches[1], Stage.TRAIN)["pca.projected"].pow(2).mean()
    loss.backward()
    optimiser.step()
    pca.eval()
    after = pipe.forward(batches[0])["pca.projected"]
    assert not torch.allclose(before, after), "a gradient step changed nothing"

    pca.freeze()
    assert not any(p.requires_grad for p in pca.parameters())
    assert "_components" in dict(pca.upstream.named_buffers())

    payload = pipe.weights_payload()
    assert set(payload["state_dict"]) == {"z", "pca"} and payload["state_dict"]["z"] == {}
    fresh = _pipeline(NodeRegistry(output_root=tmp_path))
    fresh.load_weights_payload(payload, strict=True)
    assert fresh.nodes["pca"].fitted
    assert torch.equal(fresh.forward(batches[0])["pca.projected"], after)


def test_tensorboard_writes_under_the_output_root_only(tmp_path: Path, monkeypatch) -> None:
    from cuvis_ai_schemas.execution import Metric

    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    root = tmp_path / "outputs"
    node = NodeRegistry(output_root=root).create(TENSORBOARD, "tb", {"output_dir": "./runs", "run_name": "r"})
    assert Stage.INFERENCE not in node.STAGES and Stage.TRAIN in node.STAGES
    assert node.params["output_dir"] == "./runs"  # written back as the user gave it
    node.train()
    node(metrics=[Metric(name="loss", value=1.5)])
    node.upstream.cleanup()
    written = [p for p in root.rglob("*") if p.is_file()]
    assert written and all(root in p.parents for p in written)
    assert list(work.iterdir()) == [], "nothing may land in the worker's cwd"

    with pytest.raises(InvalidArgument, match="outside the output root") as info:
        NodeRegistry(output_root=root).create(TENSORBOARD, "tb", {"output_dir": str(tmp_path / "elsewhere")})
    assert info.value.field == "output_dir"
    with pytest.raises(InvalidArgument, match="outside the output root"):
        NodeRegistry(output_root=root).create(TENSORBOARD, "tb", {"output_dir": "../escape"})


def test_every_path_hparam_is_confined_to_the_output_root(tmp_path: Path, monkeypatch) -> None:
    # ToVideoNode (in upstream's shipped ndvi.yaml) writes to output_video_path, relative to the cwd upstream.
    video = "cuvis_ai.node.video.ToVideoNode"
    monkeypatch.chdir(tmp_path)
    root = tmp_path / "outputs"
    node = NodeRegistry(output_root=root).create(video, "video", {"output_video_path": "clips/a.mp4"})
    assert Path(node.upstream.output_video_path).resolve() == (root / "clips" / "a.mp4").resolve()
    assert node.params["output_video_path"] == "clips/a.mp4"
    for escape in ("../a.mp4", str(tmp_path / "a.mp4"), "/etc/cuvis.mp4"):
        with pytest.raises(InvalidArgument, match="outside the output root") as info:
            NodeRegistry(output_root=root).create(video, "video", {"output_video_path": escape})
        assert info.value.field == "output_video_path"


def test_tensorboard_defaults_under_the_output_root(tmp_path: Path) -> None:
    node = NodeRegistry(output_root=tmp_path).create(TENSORBOARD, "tb", {})
    assert Path(node.upstream.output_dir).resolve().parent == tmp_path.resolve()


def test_native_classes_do_not_import_cuvis_ai_node() -> None:
    code = (
        "import sys\n"
        "import cuvis_cluster.engine.nodes\n"
        "from cuvis_cluster.engine.nodes.base import NodeRegistry\n"
        "r = NodeRegistry()\n"
        "r.create('cuvis_ai.node.anomaly.rx_detector.RXGlobal', 'rx', {'num_channels': 3})\n"
        "from cuvis_cluster.engine.plugins import PluginManager\n"
        "rows = PluginManager([]).list_nodes(None)\n"
        "assert any(r.source == 'cuvis-ai' for r in rows)\n"
        "print('cuvis_ai.node' in sys.modules)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "services")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == "False", out.stderr


def test_discovery_names_every_class_and_its_origin() -> None:
    from cuvis_cluster.engine.nodes.classes import builtin_manifest
    from cuvis_cluster.engine.plugins import PluginManager

    rows = PluginManager([]).list_nodes(None)
    by_path = {r.full_path: r for r in rows}
    assert len(by_path) == len(rows), "each full class name is listed once"
    rx = by_path["cuvis_ai.node.anomaly.rx_detector.RXGlobal"]
    assert rx.source == "native" and rx.class_name == "RXGlobal"
    pca = by_path[PCA]
    assert pca.source == "cuvis-ai" and pca.plugin_name == "cuvis_ai_builtin" and "data" in pca.inputs
    # Every class of upstream's builtin manifest is usable, natively or hosted.
    assert {e["class_name"] for e in builtin_manifest()} <= set(by_path)


def test_hosted_nodes_are_profiled_and_drawn(tmp_path: Path) -> None:
    from cuvis_cluster.engine import visualize
    from cuvis_cluster.engine.profiling import Profiler

    pipe = _pipeline(NodeRegistry(output_root=tmp_path))
    pipe.nodes["pca"].fit([{"data": _cube(5)}])
    profiler = Profiler()
    profiler.configure(enabled=True)
    pipe.profiler = profiler
    for seed in range(3):
        pipe.forward({"data": _cube(seed)})
    stats = {s.node_name: s for s in profiler.summary()}
    assert stats["z"].count == 3 and stats["pca"].count == 3 and stats["pca"].mean_ms > 0

    text, fmt = visualize.visualize_pipeline(pipe, "mermaid")
    assert fmt == "mermaid" and b"pca" in text and b"TrainablePCA" in text
    assert visualize._category_of(PCA) == "model"  # from the builtin manifest, nothing imported


def test_the_stage_reaches_upstream_as_context(tmp_path: Path) -> None:
    node = NodeRegistry(output_root=tmp_path).create(TENSORBOARD, "tb", {"run_name": "s"})
    seen = []
    node.upstream.forward = lambda **kw: seen.append(kw["context"].stage.value) or {}  # type: ignore[method-assign]
    node.set_stage(Stage.VAL)
    node()
    node.set_stage(None)
    node.train()
    node()
    assert seen == ["val", "train"]


def test_upstream_rx_statistical_yaml_loads_with_tensorboard_under_the_output_root(tmp_path: Path) -> None:
    import importlib.util

    from cuvis_cluster.engine.facade import Engine, EngineConfig

    spec = importlib.util.find_spec("cuvis_ai")
    assert spec is not None and spec.submodule_search_locations
    shipped = (
        Path(next(iter(spec.submodule_search_locations))) / "configs/pipeline/anomaly/rx/rx_statistical.yaml"
    )
    (tmp_path / "data").mkdir()
    engine = Engine(
        EngineConfig(
            configs_dir=tmp_path, data_dir=tmp_path / "data", output_dir=tmp_path / "out", device="cpu"
        )
    )
    try:
        sid = engine.create_session()
        engine.load_pipeline(sid, shipped.read_bytes())
        pipeline = engine.sessions.get(sid).pipeline
        assert pipeline is not None
        tb = pipeline.nodes["TensorBoardMonitorNode"]
        assert isinstance(tb, HostedNode) and tb.class_name == TENSORBOARD
        assert (tmp_path / "out").resolve() in Path(tb.upstream.output_dir).parents
        assert tb.INPUTS["metrics"].kind == "metrics"  # fed by our native metrics node
        tb.set_stage(Stage.VAL)
        tb(metrics={"auc": torch.tensor(0.75)})
        assert any(p.name.startswith("events.out.tfevents") for p in (tmp_path / "out").rglob("*"))
        tb.upstream.cleanup()
    finally:
        engine.shutdown()
