"""The pipeline graph: validation errors that name node and port, execution by stage, specs, weights."""

from __future__ import annotations

import copy
import io
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch
import yaml

import cuvis_cluster.engine.nodes  # noqa: F401  (registers the catalogue)
from cuvis_cluster.engine.nodes.base import Node, NodeRegistry, Port, Stage
from cuvis_cluster.engine.pipeline import Pipeline
from cuvis_cluster.engine.weights import read_weights, weights_bytes
from cuvis_cluster.errors import InvalidArgument

REPO = Path(__file__).resolve().parents[2]
C = 61


def rx_config() -> dict[str, Any]:
    return yaml.safe_load((REPO / "configs" / "pipeline" / "rx_statistical.yaml").read_text())


def build(config: dict[str, Any], registry: NodeRegistry | None = None) -> Pipeline:
    return Pipeline.from_config(config, registry or NodeRegistry())


def cube(b: int = 2, h: int = 6, w: int = 5, c: int = C, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(b, h, w, c, generator=g) * 4000).to(torch.uint16)


def fitted_rx() -> Pipeline:
    pipeline = build(rx_config())
    for name in pipeline.statistical_nodes():
        batches = [pipeline.node_inputs(name, {"cube": cube(seed=s)}) for s in range(3)]
        pipeline.node(name).fit(batches)
    return pipeline


HSI = "cuvis_cluster.engine.nodes.io.HyperspectralInput"


def _full(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


# -- toy nodes (added to a private registry, never to the built-in catalogue) ---------------------------
class Passthrough(Node):
    INPUTS: ClassVar[dict[str, Port]] = {"data": Port("float32", ("B", "H", "W", "C"))}
    OUTPUTS: ClassVar[dict[str, Port]] = {"data": Port("float32", ("B", "H", "W", "C"))}

    def forward(self, **inputs: Any) -> dict[str, Any]:
        return {"data": inputs["data"]}


class NeedsGain(Node):
    INPUTS: ClassVar[dict[str, Port]] = {
        "data": Port("float32", ("B", "H", "W", "C")),
        "gain": Port("float32", ()),
    }
    OUTPUTS: ClassVar[dict[str, Port]] = {"data": Port("float32", ("B", "H", "W", "C"))}

    def forward(self, **inputs: Any) -> dict[str, Any]:
        return {"data": inputs["data"] * inputs["gain"]}


class Mixer(Node):
    INPUTS: ClassVar[dict[str, Port]] = {
        "data": Port("float32", ("B", "H", "W", "C")),
        "feedback": Port("float32", ("B", "H", "W", "C"), optional=True),
    }
    OUTPUTS: ClassVar[dict[str, Port]] = {"data": Port("float32", ("B", "H", "W", "C"))}

    def forward(self, **inputs: Any) -> dict[str, Any]:
        return {"data": inputs["data"]}


def toy_registry() -> NodeRegistry:
    registry = NodeRegistry()
    registry.add(Mixer, "tests")
    registry.add(Passthrough, "tests")
    registry.add(NeedsGain, "tests")
    return registry


# -- validation -----------------------------------------------------------------------------------------
def test_unknown_node_type_names_the_node():
    config = rx_config()
    config["nodes"][2]["class_name"] = "RXGlobalTypo"
    with pytest.raises(InvalidArgument) as info:
        build(config)
    assert "rx_detector" in str(info.value) and "RXGlobalTypo" in str(info.value)


def test_unknown_output_port_names_node_and_port():
    config = rx_config()
    config["connections"][1]["source"] = "normalizer.nope"
    with pytest.raises(InvalidArgument) as info:
        build(config)
    assert "'normalizer'" in str(info.value) and "'nope'" in str(info.value)
    assert info.value.field == "normalizer.nope"


def test_unknown_input_port_names_node_and_port():
    config = rx_config()
    config["connections"][1]["target"] = "rx_detector.cube"
    with pytest.raises(InvalidArgument) as info:
        build(config)
    assert "'rx_detector'" in str(info.value) and "'cube'" in str(info.value)


def test_unknown_node_in_connection():
    config = rx_config()
    config["connections"][0]["target"] = "ghost.data"
    with pytest.raises(InvalidArgument, match="ghost"):
        build(config)


def test_dtype_mismatch_names_both_ends():
    config = rx_config()
    config["connections"] = [c for c in config["connections"] if c["target"] != "heatmap.inputs.scores"]
    config["connections"].append({"source": "decider.decisions", "target": "heatmap.scores"})
    with pytest.raises(InvalidArgument) as info:
        build(config)
    text = str(info.value)
    assert "decider.decisions" in text and "heatmap.scores" in text and "dtype" in text
    assert info.value.field == "heatmap.scores"


def test_rank_mismatch_is_refused():
    config = rx_config()
    config["connections"][0] = {"source": "data.wavelengths", "target": "normalizer.data"}
    with pytest.raises(InvalidArgument) as info:
        build(config)
    assert "rank" in str(info.value) and "normalizer.data" in str(info.value)


def test_fixed_size_mismatch_is_refused():
    config = yaml.safe_load((REPO / "configs" / "pipeline" / "deep_svdd.yaml").read_text())
    projection = next(n for n in config["nodes"] if n["name"] == "center")
    projection["hparams"]["rep_dim"] = 16  # projection emits 32-dim embeddings
    with pytest.raises(InvalidArgument) as info:
        build(config)
    assert "center" in str(info.value)


def test_cycle_is_refused_and_named():
    config = {
        "nodes": [
            {"name": "src", "class_name": HSI},
            {"name": "a", "class_name": _full(Mixer)},
            {"name": "b", "class_name": _full(Passthrough)},
            {"name": "c", "class_name": _full(Passthrough)},
        ],
        "connections": [
            {"source": "src.outputs.cube", "target": "a.inputs.data"},
            {"source": "a.outputs.data", "target": "b.inputs.data"},
            {"source": "b.outputs.data", "target": "c.inputs.data"},
            {"source": "c.outputs.data", "target": "a.inputs.feedback"},
        ],
    }
    with pytest.raises(InvalidArgument) as info:
        build(config, toy_registry())
    text = str(info.value)
    assert "cycle" in text
    assert "a -> b -> c -> a" in text or "b -> c -> a -> b" in text or "c -> a -> b -> c" in text


def test_input_fed_twice_is_refused():
    config = rx_config()
    config["connections"].append({"source": "data.cube", "target": "rx_detector.data"})
    with pytest.raises(InvalidArgument, match=r"rx_detector\.data"):
        build(config)


def test_unconnected_required_input_without_batch_key_is_refused():
    config = {
        "nodes": [{"name": "in", "class_name": HSI}, {"name": "amp", "class_name": _full(NeedsGain)}],
        "connections": [{"source": "in.outputs.cube", "target": "amp.inputs.data"}],
    }
    with pytest.raises(InvalidArgument) as info:
        build(config, toy_registry())
    assert "'amp'" in str(info.value) and "'gain'" in str(info.value)
    assert info.value.field == "amp.gain"
    # the same port is fine once the caller declares it as an extra input
    Pipeline.from_config(config, toy_registry(), extra_inputs=["gain"])


def test_duplicate_node_names_are_refused():
    config = rx_config()
    config["nodes"].append(copy.deepcopy(config["nodes"][1]))
    with pytest.raises(InvalidArgument, match="duplicate node name"):
        build(config)


def test_bad_params_name_the_node():
    config = rx_config()
    config["nodes"][2]["hparams"]["no_such_param"] = 1
    with pytest.raises(InvalidArgument, match="rx_detector"):
        build(config)


def test_old_dialect_builds_the_same_graph_and_saves_canonical():
    # our old dialect (short type names, params, node.port) is read for one release
    old = rx_config()
    for node in old["nodes"]:
        node["type"] = node.pop("class_name").rsplit(".", 1)[-1]
        node["params"] = node.pop("hparams")
    for conn in old["connections"]:
        conn["source"] = conn["source"].replace(".outputs.", ".")
        conn["target"] = conn["target"].replace(".inputs.", ".")
    a, b = build(rx_config()), build(old)
    assert a.order == b.order and a.connections == b.connections
    assert b.to_config()["nodes"] == a.to_config()["nodes"]


# -- structure and execution ----------------------------------------------------------------------------
def test_topological_order_and_round_trip_config():
    pipeline = build(rx_config())
    position = {n: i for i, n in enumerate(pipeline.order)}
    for src, _, dst, _ in pipeline.connections:
        assert position[src] < position[dst]
    again = build(pipeline.to_config())
    assert again.order == pipeline.order and again.connections == pipeline.connections
    assert pipeline.statistical_nodes() == ["normalizer", "rx_detector", "logit"]


def test_specs_use_dynamic_dims_and_concrete_dtypes():
    pipeline = build(rx_config())
    inputs = {s.name: s for s in pipeline.input_specs()}
    assert inputs["cube"].required and inputs["cube"].shape == (-1, -1, -1, -1)
    assert not inputs["mask"].required
    assert all(s.dtype != "any" for s in inputs.values())
    outputs = {s.name: s for s in pipeline.output_specs()}
    assert outputs["decider.decisions"].dtype == "bool"
    assert outputs["decider.decisions"].shape == (-1, -1, -1, 1)
    assert "metrics_anomaly.metrics" not in outputs  # metrics do not run in INFERENCE


def test_forward_by_stage_and_upto():
    pipeline = fitted_rx()
    batch = {"cube": cube(), "mask": torch.zeros(2, 6, 5, dtype=torch.int32)}
    with torch.no_grad():
        inference = pipeline(batch, Stage.INFERENCE)
        test = pipeline(batch, Stage.TEST)
        partial = pipeline(batch, Stage.INFERENCE, upto="normalizer")
    assert "decider.decisions" in inference and inference["decider.decisions"].dtype == torch.bool
    assert "metrics_anomaly.metrics" not in inference
    assert "metrics_anomaly.metrics" in test
    assert set(partial) == {"data.cube", "data.mask", "normalizer.normalized"}


def test_missing_batch_input_names_the_input():
    pipeline = fitted_rx()
    with pytest.raises(InvalidArgument) as info:
        pipeline({}, Stage.INFERENCE)
    assert info.value.field == "inputs.cube"


def test_fixed_sizes_follow_channel_symbols_to_the_node_that_fixes_them():
    pipeline = build(rx_config())
    assert pipeline.fixed_sizes("cube", 4) == {3: (61, "rx_detector.data")}
    svdd = build(yaml.safe_load((REPO / "configs" / "pipeline" / "deep_svdd.yaml").read_text()))
    assert svdd.fixed_sizes("cube", 4) == {}  # the band-pass changes the channel count


# -- weights --------------------------------------------------------------------------------------------
def test_weights_round_trip_gives_bit_identical_outputs():
    trained = fitted_rx()
    data = weights_bytes(trained.weights_payload())
    fresh = build(trained.to_config())
    fresh.load_weights_payload(read_weights(data), strict=True)
    batch = {"cube": cube(seed=9)}
    with torch.no_grad():
        a, b = trained(batch), fresh(batch)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_strict_load_lists_missing_and_unexpected_keys():
    payload = fitted_rx().weights_payload()
    del payload["state_dict"]["rx_detector"]["cov"]
    payload["state_dict"]["ghost"] = {"w": torch.zeros(1)}
    payload["state_dict"]["logit"]["extra"] = torch.zeros(1)
    with pytest.raises(InvalidArgument) as info:
        build(rx_config()).load_weights_payload(payload, strict=True)
    text = str(info.value)
    assert "rx_detector.cov" in text and "ghost" in text and "logit.extra" in text


def test_strict_load_refuses_a_missing_node():
    payload = fitted_rx().weights_payload()
    del payload["state_dict"]["normalizer"]
    with pytest.raises(InvalidArgument, match=r"normalizer\.running_min"):
        build(rx_config()).load_weights_payload(payload, strict=True)


def test_non_strict_load_takes_what_matches():
    trained = fitted_rx()
    payload = trained.weights_payload()
    del payload["state_dict"]["logit"]
    payload["state_dict"]["ghost"] = {"w": torch.zeros(1)}
    fresh = build(rx_config())
    fresh.load_weights_payload(payload, strict=False)
    assert torch.equal(fresh.node("rx_detector").cov, trained.node("rx_detector").cov)
    assert fresh.node("rx_detector").fitted
    # the logit keeps its construction values: nothing was loaded into it
    assert float(fresh.node("logit").bias) == 0.0 != float(trained.node("logit").bias)


def test_shape_mismatch_is_refused_even_when_not_strict():
    payload = fitted_rx().weights_payload()
    payload["state_dict"]["rx_detector"]["mu"] = torch.zeros(60)
    with pytest.raises(InvalidArgument, match=r"rx_detector\.mu"):
        build(rx_config()).load_weights_payload(payload, strict=False)


class Arbitrary:
    def __init__(self) -> None:
        self.side_effect = "would run code on unpickle"


def test_weights_only_refuses_a_pickled_object():
    buf = io.BytesIO()
    torch.save({"state_dict": {}, "metadata": {}, "payload": Arbitrary()}, buf)
    with pytest.raises(InvalidArgument, match="weights_only"):
        read_weights(buf.getvalue())


@pytest.mark.parametrize("data", [b"", b"not a torch file", b"PK\x03\x04garbage"])
def test_garbage_weights_are_invalid_argument(data):
    with pytest.raises(InvalidArgument):
        read_weights(data)


def test_legacy_flat_weights_are_refused():
    payload = {"rx_detector.mu": torch.zeros(C)}
    with pytest.raises(InvalidArgument, match="state_dict"):
        build(rx_config()).load_weights_payload(read_weights(weights_bytes(payload)), strict=False)
