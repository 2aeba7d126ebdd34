"""Weights files in upstream's layout (contract C4): upstream's shipped ``channel_selector.pt`` into our nodes
with strict=True, ours back into upstream's classes, strict semantics, and this project's earlier layout.

Outputs are compared on the same input: ``equal`` is bit-identical; RX allows 1e-6 relative (float32
einsum order).
"""

from __future__ import annotations

import importlib
import logging
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from cuvis_cluster.engine.nodes import BUILTIN
from cuvis_cluster.engine.nodes.anomaly import RXGlobal
from cuvis_cluster.engine.nodes.deciders import BinaryDecider
from cuvis_cluster.engine.nodes.deep_svdd import DeepSVDDCenterTracker, DeepSVDDProjection, DeepSVDDScores
from cuvis_cluster.engine.nodes.selection import SoftChannelSelector
from cuvis_cluster.engine.weights import load_node_states, read_weights, weights_bytes, weights_payload
from cuvis_cluster.errors import FailedPrecondition, InvalidArgument

cuvis_ai = pytest.importorskip("cuvis_ai")
SHIPPED = Path(cuvis_ai.__file__).parent / "configs" / "pipeline" / "anomaly" / "rx"
CHAIN = ("MinMaxNormalizer", "SoftChannelSelector", "RXGlobal", "ScoreToLogit", "BinaryDecider")


def native_classes() -> dict[str, type]:
    return {full: cls for cls in BUILTIN.values() for full in getattr(cls, "UPSTREAM_CLASSES", ())}


def upstream_class(full: str) -> type:
    module, _, name = full.rpartition(".")
    return getattr(importlib.import_module(module), name)


def build(config: dict[str, Any], tmp_path: Path, *, native: bool) -> dict[str, torch.nn.Module]:
    """The YAML's nodes: ours where we serve the class (when ``native``), upstream's otherwise."""
    ours = native_classes()
    nodes: dict[str, torch.nn.Module] = {}
    for spec in config["nodes"]:
        hparams = dict(spec.get("hparams") or {})
        if "output_dir" in hparams:
            hparams["output_dir"] = str(tmp_path / "tb")
        cls = ours.get(spec["class_name"]) if native else None
        if cls is None:
            cls = upstream_class(spec["class_name"])
        node = cls(**hparams)
        if cls in BUILTIN.values():
            node.name = spec["name"]
        nodes[spec["name"]] = node
    return nodes


def run_chain(nodes: dict[str, torch.nn.Module], cube: torch.Tensor) -> dict[str, torch.Tensor]:
    for node in nodes.values():
        node.eval()
    out = {}
    with torch.no_grad():
        x = nodes["MinMaxNormalizer"](data=cube)["normalized"]
        out["selected"] = x = nodes["SoftChannelSelector"](data=x)["selected"]
        out["scores"] = s = nodes["RXGlobal"](data=x)["scores"]
        out["logits"] = logit = nodes["ScoreToLogit"](scores=s)["logits"]
        out["decisions"] = nodes["BinaryDecider"](logits=logit)["decisions"]
    return out


@pytest.fixture(scope="module")
def shipped() -> tuple[dict[str, Any], dict[str, Any]]:
    config = yaml.safe_load((SHIPPED / "channel_selector.yaml").read_text())
    payload = read_weights((SHIPPED / "channel_selector.pt").read_bytes(), "weights_path")
    return config, payload


def test_upstream_channel_selector_pt_loads_strictly_and_matches_upstream(shipped, tmp_path: Path) -> None:
    config, payload = shipped
    ours = build(config, tmp_path, native=True)
    assert all(type(ours[name]) in BUILTIN.values() for name in CHAIN)
    assert set(ours) == set(payload["state_dict"])  # an entry for every node, empty for stateless ones
    load_node_states(ours, payload, strict=True)
    theirs = build(config, tmp_path, native=False)
    for name, node in theirs.items():
        node.load_state_dict(payload["state_dict"][name], strict=True)
    cube = torch.rand(2, 8, 9, 61, generator=torch.Generator().manual_seed(0)) * 4000
    got, expected = run_chain(ours, cube), run_chain(theirs, cube)
    assert torch.equal(got["selected"], expected["selected"])
    torch.testing.assert_close(got["scores"], expected["scores"], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(got["logits"], expected["logits"], rtol=1e-6, atol=1e-6)
    agree = (got["decisions"] == expected["decisions"]).float().mean()
    assert agree == 1.0


def test_our_weights_file_loads_strictly_into_upstream(shipped, tmp_path: Path) -> None:
    config, payload = shipped
    ours = build(config, tmp_path, native=True)
    load_node_states(ours, payload, strict=True)
    with torch.no_grad():  # make the state ours, not a copy of upstream's file
        ours["RXGlobal"].mu.add_(0.01)
        ours["ScoreToLogit"].bias.mul_(1.5)
    data = read_weights(weights_bytes(weights_payload(ours, {"name": "ours"})))
    assert data["metadata"] == {"name": "ours"}
    assert {k: sorted(v) for k, v in data["state_dict"].items()} == {
        k: sorted(v) for k, v in payload["state_dict"].items()
    }
    theirs = build(config, tmp_path, native=False)
    for name, node in theirs.items():
        node.load_state_dict(data["state_dict"][name], strict=True)
    cube = torch.rand(1, 6, 5, 61, generator=torch.Generator().manual_seed(1)) * 4000
    got, expected = run_chain(ours, cube), run_chain(theirs, cube)
    torch.testing.assert_close(got["scores"], expected["scores"], rtol=1e-6, atol=1e-6)
    assert torch.equal(got["decisions"], expected["decisions"])


def test_strict_errors_name_node_and_key(shipped, tmp_path: Path) -> None:
    config, payload = shipped
    ours = build(config, tmp_path, native=True)
    state = {k: dict(v) for k, v in payload["state_dict"].items()}
    del state["RXGlobal"]["cov_inv"]
    state["ScoreToLogit"]["offset"] = torch.tensor(1.0)
    state["ghost"] = {}
    before = ours["ScoreToLogit"].scale.clone()
    state["ScoreToLogit"]["scale"] = before + 1.0
    with pytest.raises(InvalidArgument) as info:
        load_node_states(ours, {"state_dict": state, "metadata": {}}, strict=True)
    message = info.value.message
    assert "RXGlobal.cov_inv" in message and "ScoreToLogit.offset" in message and "ghost" in message
    assert torch.equal(ours["ScoreToLogit"].scale, before)  # nothing was copied
    # An absent entry of a stateless node is fine; an absent entry of a stateful node is not.
    lean = {k: v for k, v in payload["state_dict"].items() if k not in ("bce", "mask")}
    load_node_states(ours, {"state_dict": lean, "metadata": {}}, strict=True)
    no_rx = {k: v for k, v in payload["state_dict"].items() if k != "RXGlobal"}
    with pytest.raises(InvalidArgument, match=r"RXGlobal\.mu"):
        load_node_states(ours, {"state_dict": no_rx, "metadata": {}}, strict=True)
    bad_shape = {
        **payload["state_dict"],
        "RXGlobal": {**payload["state_dict"]["RXGlobal"], "mu": torch.zeros(3)},
    }
    with pytest.raises(InvalidArgument, match=r"RXGlobal\.mu: shape \(3,\)"):
        load_node_states(ours, {"state_dict": bad_shape, "metadata": {}}, strict=False)


def test_non_strict_never_drops_needed_state_silently(shipped, tmp_path: Path) -> None:
    config, payload = shipped
    ours = build(config, tmp_path, native=True)
    partial = {k: v for k, v in payload["state_dict"].items() if k != "RXGlobal"}
    partial["ghost"] = {"w": torch.zeros(1)}  # ignored when not strict
    load_node_states(ours, {"state_dict": partial, "metadata": {}}, strict=False)
    x = torch.rand(1, 2, 2, 61)
    ours["SoftChannelSelector"](data=x)  # it got its state
    with pytest.raises(FailedPrecondition, match="RXGlobal"):
        ours["RXGlobal"](data=x)

    torch.manual_seed(0)
    projection = DeepSVDDProjection(in_channels=4, rep_dim=3, hidden=5)
    projection.name = "projection"
    state = {"projection": {"net.fc2.weight": torch.zeros(3, 5)}}  # fc1 missing
    load_node_states({"projection": projection}, {"state_dict": state, "metadata": {}}, strict=False)
    projection.eval()
    with pytest.raises(FailedPrecondition, match="projection"):
        projection(data=torch.rand(1, 2, 2, 4))
    load_node_states(
        {"projection": projection},
        {"state_dict": {"projection": DeepSVDDProjection(4, 3, 5).state_dict()}, "metadata": {}},
    )
    projection(data=torch.rand(1, 2, 2, 4))  # a complete load makes it usable again


def test_deep_svdd_upstream_file_layout_round_trip(tmp_path: Path) -> None:
    from cuvis_ai.node.anomaly import deep_svdd as up

    torch.manual_seed(3)
    theirs = {
        "projection": up.DeepSVDDProjection(in_channels=5, rep_dim=4, hidden=6),
        "center": up.DeepSVDDCenterTracker(rep_dim=4),
        "scores": up.DeepSVDDScores(),
    }
    train = torch.rand(2, 4, 4, 5)
    theirs["center"].statistical_initialization(
        iter([{"embeddings": theirs["projection"](data=train)["embeddings"]}])
    )
    file = {"state_dict": {k: v.state_dict() for k, v in theirs.items()}, "metadata": {}}
    assert set(file["state_dict"]["projection"]) == {"net.fc1.weight", "net.fc1.bias", "net.fc2.weight"}
    ours = {
        "projection": DeepSVDDProjection(in_channels=5, rep_dim=4, hidden=6),
        "center": DeepSVDDCenterTracker(rep_dim=4),
        "scores": DeepSVDDScores(),
    }
    load_node_states(ours, read_weights(weights_bytes(file)), strict=True)
    for node in ours.values():
        node.eval()
    x = torch.rand(1, 3, 3, 5)
    with torch.no_grad():
        z = ours["projection"](data=x)["embeddings"]
        got = ours["scores"](embeddings=z, center=ours["center"](embeddings=z)["center"])["scores"]
        z_up = theirs["projection"](data=x)["embeddings"]
        expected = theirs["scores"](embeddings=z_up, center=theirs["center"]._tracked_center)["scores"]
    assert torch.equal(got, expected)


def test_earlier_project_layout_is_still_read(caplog: pytest.LogCaptureFixture) -> None:
    torch.manual_seed(4)
    projection = DeepSVDDProjection(in_channels=4, rep_dim=3, hidden=5, bias=False)
    net = projection.net
    old_file = {
        "state_dict": {
            "projection": {
                "net.0.weight": net.fc1.weight.detach().clone(),
                "net.2.weight": net.fc2.weight.detach().clone(),
            },
            "center": {"center": torch.arange(3.0)},
            "decider": {"threshold": torch.tensor(0.7)},
            "selector": {"channel_logits": torch.arange(4.0), "temperature": torch.tensor(0.3)},
            "rx": {},
        },
        "metadata": {},
    }
    nodes = {
        "projection": DeepSVDDProjection(in_channels=4, rep_dim=3, hidden=5, bias=False),
        "center": DeepSVDDCenterTracker(rep_dim=3),
        "decider": BinaryDecider(),
        "selector": SoftChannelSelector(n_select=2, input_channels=4),
        "rx": RXGlobal(num_channels=2),
    }
    with caplog.at_level(logging.WARNING, logger="cuvis_cluster.engine.weights"):
        load_node_states(nodes, old_file, strict=False)
    assert "earlier weights layout" in caplog.text
    assert torch.equal(nodes["projection"].net.fc1.weight, net.fc1.weight)
    assert torch.equal(nodes["center"].center, torch.arange(3.0))
    assert nodes["decider"].threshold == pytest.approx(0.7) and nodes["decider"].params[
        "threshold"
    ] == pytest.approx(0.7)
    assert nodes["selector"].temperature == pytest.approx(0.3)
    with pytest.raises(InvalidArgument, match=r"rx\.mu"):  # strict still wants RX's real state
        load_node_states(nodes, old_file, strict=True)
