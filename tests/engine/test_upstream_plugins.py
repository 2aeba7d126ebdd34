"""A plugin package written against cuvis_ai_core.node.Node, loaded from a plugin root with upstream's
manifest format: it loads, runs in a pipeline, fits, trains, saves and restores, and other sessions do not
see it. Pipelines are built with ``Pipeline.from_config`` in the old dialect until the canonical loader lands.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from cuvis_cluster.engine.facade import Engine, EngineConfig
from cuvis_cluster.engine.nodes.base import Stage
from cuvis_cluster.engine.pipeline import Pipeline
from cuvis_cluster.errors import FailedPrecondition, InvalidArgument

ROOT = Path(__file__).resolve().parents[1] / "fixtures" / "upstream_plugin"
MANIFEST = (ROOT / "manifest.yaml").read_bytes()
CLASS = "h2_meanshift.MeanShift"


@pytest.fixture
def engine(tmp_path):
    (tmp_path / "data").mkdir()
    eng = Engine(
        EngineConfig(
            configs_dir=tmp_path,
            data_dir=tmp_path / "data",
            output_dir=tmp_path / "outputs",
            plugin_dirs=[ROOT],
            device="cpu",
        )
    )
    yield eng
    eng.shutdown()


def _cube(seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, 4, 5, 3, generator=g) + torch.tensor([1.0, -2.0, 5.0])


def _pipeline(session) -> Pipeline:
    config = {
        "metadata": {"name": "plugin"},
        "plugins": ["h2_meanshift"],
        "nodes": [{"name": "shift", "type": CLASS, "params": {"num_channels": 3, "scale": 2.0}}],
        "connections": [],
    }
    session.registry.require_plugins(["cuvis_ai_builtin", "h2_meanshift"])
    return Pipeline.from_config(config, session.registry, extra_inputs=["data"])


def test_plugin_loads_fits_trains_saves_and_restores(engine: Engine) -> None:
    sid = engine.create_session()
    loaded = engine.load_plugin(sid, MANIFEST)
    assert (loaded.name, loaded.error) == ("h2_meanshift", "")
    assert [p.name for p in engine.list_plugins(sid)] == ["h2_meanshift"]
    row = next(r for r in engine.list_nodes(sid) if r.full_path == CLASS)
    assert (row.source, row.plugin_name, row.class_name) == ("plugin", "h2_meanshift", "MeanShift")

    session = engine.sessions.get(sid)
    pipe = _pipeline(session)
    node = pipe.nodes["shift"]
    assert type(node).class_name == CLASS
    cubes = [_cube(1), _cube(2)]
    node.fit(pipe.node_inputs("shift", {"data": x}) for x in cubes)
    means = torch.cat([x.reshape(-1, 3) for x in cubes]).double().mean(0).float()
    assert torch.allclose(node.state_dict()["offset"], means)
    out = pipe.forward({"data": cubes[0]})["shift.shifted"]
    assert torch.allclose(out, (cubes[0] - means) * 2.0)

    node.unfreeze()
    params = [p for p in node.parameters() if p.requires_grad]
    assert len(params) == 1
    optimiser = torch.optim.SGD(params, lr=0.5)
    node.train()
    pipe.forward({"data": cubes[1]}, Stage.TRAIN)["shift.shifted"].pow(2).mean().backward()
    optimiser.step()
    node.freeze()
    node.eval()
    trained = node.state_dict()["offset"].clone()
    assert not torch.allclose(trained, means)

    payload = pipe.weights_payload()
    assert list(payload["state_dict"]["shift"]) == ["offset"]  # the plugin's own key, no prefix
    restored = _pipeline(session)
    restored.load_weights_payload(payload, strict=True)
    assert torch.equal(
        restored.forward({"data": cubes[0]})["shift.shifted"],
        pipe.forward({"data": cubes[0]})["shift.shifted"],
    )


def test_plugin_classes_stay_in_their_session(engine: Engine) -> None:
    first, other = engine.create_session(), engine.create_session()
    assert engine.load_plugin(first, MANIFEST).error == ""
    assert all(r.full_path != CLASS for r in engine.list_nodes(other))
    assert engine.list_plugins(other) == []
    registry = engine.sessions.get(other).registry
    with pytest.raises(InvalidArgument, match=CLASS):
        registry.create(CLASS, "shift", {"num_channels": 3})
    with pytest.raises(FailedPrecondition, match="h2_meanshift"):
        registry.require_plugins(["h2_meanshift"])


def test_git_sources_are_refused_with_the_reason(engine: Engine) -> None:
    sid = engine.create_session()
    manifest = json.dumps({"name": "adaclip", "repo": "https://github.com/x/y.git", "tag": "v1"}).encode()
    with pytest.raises(FailedPrecondition, match="network"):
        engine.load_plugin(sid, manifest)
    with pytest.raises(FailedPrecondition, match="git or network"):
        engine.sessions.get(sid).registry.require_plugins(["adaclip"])


def test_upstream_shipped_manifest_is_refused_without_fetching(engine: Engine) -> None:
    import importlib.util

    spec = importlib.util.find_spec("cuvis_ai")
    assert spec is not None and spec.submodule_search_locations
    shipped = Path(next(iter(spec.submodule_search_locations))) / "configs" / "plugins" / "adaclip.yaml"
    with pytest.raises(FailedPrecondition, match="does not fetch"):
        engine.load_plugin(engine.create_session(), shipped.read_bytes())


def test_clear_plugin_cache_then_reload(engine: Engine) -> None:
    sid = engine.create_session()
    assert engine.load_plugin(sid, MANIFEST).error == ""
    assert engine.clear_plugin_cache("h2_meanshift") >= 1
    again = engine.create_session()
    assert engine.load_plugin(again, MANIFEST).error == ""
    assert any(r.full_path == CLASS for r in engine.list_nodes(again))
