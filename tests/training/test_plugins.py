"""Plugins over gRPC: allow-listed roots only, per-session registration, discovery, cache clearing."""

from __future__ import annotations

import json
import textwrap
import uuid
from pathlib import Path

import grpc
import numpy as np
import pytest
from trainlib import (
    SMALL_DATA,
    STATISTICAL,
    frame,
    infer,
    pipeline_of,
    resolve,
    rpc_code,
    set_trainrun,
    train,
)

from cuvis_cluster.wire.pb import pb

pytestmark = pytest.mark.integration

PLUGIN_CODE = '''
"""A tiny plugin: scales anomaly scores."""
from typing import Any, ClassVar

from cuvis_cluster.engine.nodes.base import Node, Port

from .helpers import factor_of


class ScoreScaler(Node):
    """Multiplies scores by a factor."""

    INPUTS: ClassVar[dict[str, Port]] = {{"scores": Port("float32", ("B", "H", "W", 1))}}
    OUTPUTS: ClassVar[dict[str, Port]] = {{
        "scaled": Port("float32", ("B", "H", "W", 1), description="factor x scores")
    }}
    CATEGORY = "transform"
    TAGS = ("anomaly", "postprocessing")

    def __init__(self, factor: float = {factor}) -> None:
        super().__init__(factor=factor)
        self.factor = factor_of(factor)

    def forward(self, **inputs: Any) -> dict[str, Any]:
        return {{"scaled": inputs["scores"] * self.factor}}
'''


def write_plugin(root: Path, factor: float = 2.0) -> str:
    name = f"acme_{uuid.uuid4().hex[:8]}"
    package = root / name
    package.mkdir()
    (package / "__init__.py").write_text(textwrap.dedent(PLUGIN_CODE.format(factor=factor)))
    (package / "helpers.py").write_text("def factor_of(value):\n    return float(value)\n")
    return name


def load_plugin(stub, session_id: str, manifest: dict | bytes) -> pb.LoadPluginResponse:
    raw = manifest if isinstance(manifest, bytes) else json.dumps(manifest).encode()
    return stub.LoadPlugin(
        pb.LoadPluginRequest(session_id=session_id, manifest=pb.PluginManifest(config_bytes=raw))
    )


def pipeline_with_scaler(stub, session_id: str, plugin: str) -> dict:
    """The RX train run with the plugin's scaler after the detector (the pipeline inline)."""
    trainrun = resolve(stub, session_id, "trainrun/rx_statistical", SMALL_DATA)
    pipeline = pipeline_of(trainrun)
    pipeline["plugins"] = [*pipeline.get("plugins", []), plugin]
    # The plugin's manifest (this project's older format) registers the bare class name.
    scaler = {"name": "scaler", "class_name": "ScoreScaler", "hparams": {"factor": 3.0}}
    pipeline["nodes"].append(scaler)
    pipeline["connections"].append({"source": "rx_detector.outputs.scores", "target": "scaler.inputs.scores"})
    return {**trainrun, "pipeline": pipeline}


def test_plugin_under_allowed_root_adds_a_node_a_pipeline_uses(stub, session, plugin_root):
    name = write_plugin(plugin_root)
    reply = load_plugin(
        stub, session, {"name": name, "path": name, "nodes": ["ScoreScaler"], "tags": ["demo"]}
    )
    assert reply.registered_plugin == name and not reply.error

    listed = stub.ListLoadedPlugins(pb.ListLoadedPluginsRequest(session_id=session)).plugins
    assert [p.name for p in listed] == [name] and list(listed[0].capabilities) == ["ScoreScaler"]
    info = stub.GetPluginInfo(pb.GetPluginInfoRequest(session_id=session, plugin_name=name)).plugin
    assert info.type == "local" and Path(info.source) == (plugin_root / name).resolve()

    nodes = {
        n.class_name: n
        for n in stub.ListAvailableNodes(pb.ListAvailableNodesRequest(session_id=session)).nodes
    }
    scaler = nodes["ScoreScaler"]
    assert scaler.source == "plugin" and scaler.plugin_name == name
    assert scaler.category == pb.NODE_CATEGORY_TRANSFORM and pb.NODE_TAG_ANOMALY in scaler.tags
    assert "scores" in scaler.input_specs and scaler.output_specs["scaled"].description == "factor x scores"
    assert "RXGlobal" in nodes and nodes["RXGlobal"].source == "native"

    trainrun = pipeline_with_scaler(stub, session, name)
    assert set_trainrun(stub, session, trainrun).pipeline_from_config
    assert train(stub, session, STATISTICAL)[-1].status == pb.TRAIN_STATUS_COMPLETE
    out = infer(stub, session, [frame(6)], ["rx_detector.scores", "scaler.scaled"])
    np.testing.assert_allclose(out["scaler.scaled"], 3.0 * out["rx_detector.scores"], rtol=1e-6)


def test_other_sessions_do_not_see_a_plugin(stub, session, plugin_root):
    name = write_plugin(plugin_root)
    assert load_plugin(
        stub, session, {"name": name, "path": name, "nodes": ["ScoreScaler"]}
    ).registered_plugin
    other = stub.CreateSession(pb.CreateSessionRequest()).session_id
    try:
        nodes = {
            n.class_name
            for n in stub.ListAvailableNodes(pb.ListAvailableNodesRequest(session_id=other)).nodes
        }
        assert "ScoreScaler" not in nodes and "RXGlobal" in nodes
        assert not stub.ListLoadedPlugins(pb.ListLoadedPluginsRequest(session_id=other)).plugins
        code = rpc_code(
            lambda: stub.GetPluginInfo(pb.GetPluginInfoRequest(session_id=other, plugin_name=name))
        )
        assert code == grpc.StatusCode.NOT_FOUND
        trainrun = pipeline_with_scaler(stub, other, name)
        with pytest.raises(grpc.RpcError) as info:
            set_trainrun(stub, other, trainrun)
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION and name in info.value.details()
        # session-less discovery lists the built-ins only
        bare = {n.class_name for n in stub.ListAvailableNodes(pb.ListAvailableNodesRequest()).nodes}
        assert "ScoreScaler" not in bare
    finally:
        stub.CloseSession(pb.CloseSessionRequest(session_id=other))


def test_plugins_outside_the_roots_are_refused(stub, session, plugin_root, outside_root):
    name = write_plugin(outside_root)
    for path in (str(outside_root / name), f"../outside/{name}", str(plugin_root / ".." / "outside" / name)):
        code = rpc_code(
            lambda p=path: load_plugin(stub, session, {"name": "evil", "path": p, "nodes": ["ScoreScaler"]})
        )
        assert code == grpc.StatusCode.PERMISSION_DENIED, path
    # a symlink inside the root that points outside is refused as well
    (plugin_root / f"link_{name}").symlink_to(outside_root / name, target_is_directory=True)
    code = rpc_code(
        lambda: load_plugin(stub, session, {"name": "evil", "path": f"link_{name}", "nodes": ["ScoreScaler"]})
    )
    assert code == grpc.StatusCode.PERMISSION_DENIED
    # nothing got registered
    assert not stub.ListLoadedPlugins(pb.ListLoadedPluginsRequest(session_id=session)).plugins


def test_bad_manifests(stub, session, plugin_root):
    for raw in (b"", b"{not json", b"[1, 2]"):
        assert rpc_code(lambda r=raw: load_plugin(stub, session, r)) == grpc.StatusCode.INVALID_ARGUMENT
    name = write_plugin(plugin_root)
    problems = [
        ({"path": name, "nodes": ["ScoreScaler"]}, "name"),
        ({"name": name, "path": name, "nodes": []}, "nodes"),
        ({"name": name, "path": name, "nodes": ["NoSuchNode"]}, "NoSuchNode"),
        ({"name": name, "path": name, "nodes": ["os.path:join"]}, "os.path"),
        ({"name": name, "path": name, "nodes": ["helpers:factor_of"]}, "not a Node"),
        ({"name": name, "path": "does_not_exist", "nodes": ["X"]}, "does not exist"),
    ]
    for manifest, needle in problems:
        reply = load_plugin(stub, session, manifest)
        assert not reply.registered_plugin and needle in reply.error, (manifest, reply.error)
    # A git source is a precondition this worker never meets: it does not fetch plugins over the network.
    remote = {"name": name, "repo": "https://example.com/x.git", "tag": "v1", "nodes": ["X"]}
    with pytest.raises(grpc.RpcError) as info:
        load_plugin(stub, session, remote)
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "git" in info.value.details()
    broken = plugin_root / f"broken_{name}"
    broken.mkdir()
    (broken / "__init__.py").write_text("raise RuntimeError('plugin import exploded')\n")
    reply = load_plugin(stub, session, {"name": "broken", "path": broken.name, "nodes": ["X"]})
    assert "plugin import exploded" in reply.error
    code = rpc_code(
        lambda: stub.GetPluginInfo(pb.GetPluginInfoRequest(session_id=session, plugin_name="nope"))
    )
    assert code == grpc.StatusCode.NOT_FOUND


def test_clear_plugin_cache_drops_cached_modules_and_sessions_keep_their_nodes(stub, session, plugin_root):
    name = write_plugin(plugin_root, factor=2.0)
    manifest = {"name": name, "path": name, "nodes": ["ScoreScaler"]}
    assert load_plugin(stub, session, manifest).registered_plugin == name
    cleared = stub.ClearPluginCache(pb.ClearPluginCacheRequest(plugin_name=name)).cleared_count
    assert cleared == 1
    assert stub.ClearPluginCache(pb.ClearPluginCacheRequest(plugin_name=name)).cleared_count == 0
    # the session keeps the node it registered
    nodes = {
        n.class_name for n in stub.ListAvailableNodes(pb.ListAvailableNodesRequest(session_id=session)).nodes
    }
    assert "ScoreScaler" in nodes


def test_a_plugin_train_run_restores_into_a_session_that_loaded_the_plugin(stub, session, plugin_root):
    name = write_plugin(plugin_root)
    manifest = {"name": name, "path": name, "nodes": ["ScoreScaler"]}
    assert load_plugin(stub, session, manifest).registered_plugin == name
    assert set_trainrun(stub, session, pipeline_with_scaler(stub, session, name)).pipeline_from_config
    assert train(stub, session, STATISTICAL)[-1].status == pb.TRAIN_STATUS_COMPLETE
    saved = stub.SaveTrainRun(
        pb.SaveTrainRunRequest(session_id=session, trainrun_path=f"runs/{name}/run.yaml", save_weights=True)
    )
    before = infer(stub, session, [frame(6)], ["scaler.scaled"])

    fresh = stub.CreateSession(pb.CreateSessionRequest()).session_id
    try:
        assert load_plugin(stub, fresh, manifest).registered_plugin == name
        restored = stub.RestoreTrainRun(
            pb.RestoreTrainRunRequest(
                trainrun_path=saved.trainrun_path, weights_path=saved.weights_path, session_id=fresh
            )
        )
        assert restored.session_id == fresh
        after = infer(stub, fresh, [frame(6)], ["scaler.scaled"])
        assert before["scaler.scaled"].tobytes() == after["scaler.scaled"].tobytes()
    finally:
        stub.CloseSession(pb.CloseSessionRequest(session_id=fresh))
