"""Every registered node: its declared ports match what forward really returns.

Each built-in type needs an entry in ``CASES`` (params plus input overrides); a new node without one
fails ``test_every_builtin_has_a_case``, so the port contract cannot silently drift.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

import cuvis_cluster.engine.nodes as nodes
from cuvis_cluster.engine.nodes.base import ANY_DTYPE, BUILTIN, TORCH_DTYPES, Node, NodeRegistry, Port, Stage

B, H, W, C = 2, 5, 6, 8
SIZES: dict[str, int] = {"B": B, "H": H, "W": W, "C": C, "D": 4, "K": C}
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def wavelengths(channels: int = C) -> torch.Tensor:
    return torch.linspace(430, 910, channels)


def _logits() -> torch.Tensor:
    return torch.randn(B, H, W, 1)


def _mask() -> torch.Tensor:
    m = torch.zeros(B, H, W, 1, dtype=torch.bool)
    m[:, :2, :2] = True
    return m


# type name -> (params, {input port: factory}); other inputs are built from their port specs.
CASES: dict[str, tuple[dict[str, Any], dict[str, Callable[[], torch.Tensor]]]] = {
    "HyperspectralInput": (
        {"normal_class_ids": [0, 1]},
        {
            "cube": lambda: torch.randint(0, 16000, (B, H, W, C), dtype=torch.int32).to(torch.uint16),
            "mask": lambda: torch.randint(0, 4, (B, H, W), dtype=torch.int32),
            "wavelengths": lambda: wavelengths().to(torch.int32).repeat(B, 1),
        },
    ),
    "LentilsAnomalyDataNode": (
        {"normal_class_ids": [0, 1]},
        {
            "cube": lambda: torch.rand(B, H, W, C),
            "mask": lambda: torch.randint(0, 4, (B, H, W), dtype=torch.int32),
            "wavelengths": lambda: wavelengths(),
        },
    ),
    "BandpassByWavelength": ({"min_wavelength_nm": 600}, {"wavelengths": wavelengths}),
    "MinMaxNormalizer": ({}, {}),
    "ZScoreNormalizerGlobal": ({"num_channels": C, "hidden": 64}, {}),
    "PerPixelUnitNorm": ({}, {}),
    "RXGlobal": ({"num_channels": C}, {}),
    "RXPerBatch": ({}, {}),
    "ScoreToLogit": ({}, {"scores": lambda: torch.rand(B, H, W, 1) * 10}),
    "SoftChannelSelector": ({"n_select": 3, "input_channels": C, "init_method": "variance"}, {}),
    "DeepSVDDProjection": ({"in_channels": C, "rep_dim": 4, "hidden": 16}, {}),
    "DeepSVDDCenterTracker": ({"rep_dim": 4}, {}),
    "DeepSVDDScores": ({}, {}),
    "DeepSVDDSoftBoundaryLoss": ({"nu": 0.1}, {}),
    "BinaryDecider": ({"threshold": 0.5}, {"logits": _logits}),
    "QuantileBinaryDecider": ({"quantile": 0.9}, {"logits": lambda: torch.rand(B, H, W, 1)}),
    "AnomalyBCEWithLogits": ({"weight": 2.0, "pos_weight": 3.0}, {"predictions": _logits, "targets": _mask}),
    "SelectorEntropyRegularizer": ({"weight": 0.1}, {"weights": lambda: torch.rand(C)}),
    "SelectorDiversityRegularizer": ({"weight": 0.1}, {"weights": lambda: torch.rand(C)}),
    "AnomalyDetectionMetrics": (
        {},
        {"decisions": _mask, "targets": lambda: torch.rand(B, H, W, 1) > 0.7, "logits": _logits},
    ),
    "ScoreHeatmapVisualizer": ({"cmap": "inferno"}, {}),
    "FalseRGBVisualizer": ({}, {"wavelengths": wavelengths}),
    "CubeRGBVisualizer": ({}, {"wavelengths": wavelengths, "weights": lambda: torch.rand(C)}),
    "AnomalyMaskVisualizer": ({"channel": 2}, {"decisions": _mask, "mask": _mask}),
    "AnomalyMask": ({"channel": 1}, {"decisions": _mask}),
}


def _size(dim: int | str) -> int:
    return dim if isinstance(dim, int) and dim > 0 else SIZES.get(str(dim), 3)


def _tensor_for(port: Port) -> torch.Tensor:
    shape = tuple(_size(d) for d in port.shape)
    dtype = "float32" if port.dtype == ANY_DTYPE else port.dtype
    if dtype == "bool":
        return torch.rand(shape) > 0.5
    if dtype.startswith("float"):
        return torch.rand(shape).to(TORCH_DTYPES[dtype])
    return torch.randint(0, 4, shape).to(TORCH_DTYPES[dtype])


def _inputs(
    node: Node, overrides: dict[str, Callable[[], torch.Tensor]], device: str
) -> dict[str, torch.Tensor]:
    out = {}
    for name, port in node.input_ports().items():
        out[name] = overrides[name]() if name in overrides else _tensor_for(port)
    return {k: v.to(device) for k, v in out.items()}


def _check_tensor(where: str, port: Port, value: Any, inputs: dict[str, torch.Tensor], device: str) -> None:
    assert isinstance(value, torch.Tensor), f"{where}: {type(value)}"
    assert value.device.type == device, f"{where} on {value.device}"
    if port.dtype != ANY_DTYPE:
        assert value.dtype == TORCH_DTYPES[port.dtype], f"{where}: dtype {value.dtype} != {port.dtype}"
    assert value.dim() == len(port.shape), f"{where}: shape {tuple(value.shape)} vs {port.shape}"
    for dim, size in zip(value.shape, port.shape, strict=True):
        if isinstance(size, int) and size > 0:
            assert dim == size, f"{where}: shape {tuple(value.shape)} vs {port.shape}"
    # The symbolic batch/spatial dims follow the data input.
    reference = next((v for v in inputs.values() if v.dim() == 4), None)
    if reference is not None and port.shape[:3] == ("B", "H", "W"):
        assert tuple(value.shape[:3]) == tuple(reference.shape[:3]), where


def test_every_builtin_has_a_case() -> None:
    assert set(BUILTIN) == set(CASES), "add the new node types to CASES"


def test_registry_is_populated_by_importing_the_package() -> None:
    assert nodes.BUILTIN is BUILTIN
    for cls in BUILTIN.values():
        assert cls.CATEGORY in {"source", "sink", "transform", "model", "loss", "metric", "visualizer"}
        assert cls.DESCRIPTION, cls.type_name
        assert cls.STAGES, cls.type_name
    losses = [c for c in BUILTIN.values() if c.CATEGORY == "loss"]
    assert losses and all(Stage.INFERENCE not in c.STAGES for c in losses)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("type_name", sorted(CASES))
def test_ports_match_forward_outputs(type_name: str, device: str) -> None:
    torch.manual_seed(0)
    params, overrides = CASES[type_name]
    node = NodeRegistry().create(type_name, "n", params).to(device)
    if node.has_statistical_init():
        node.fit([_inputs(node, overrides, device) for _ in range(2)])
        assert node.fitted
    for training in (False, True):
        node.train(training)
        inputs = _inputs(node, overrides, device)
        outputs = node(**inputs)
        declared = node.output_ports()
        assert set(outputs) <= set(declared), f"undeclared outputs {set(outputs) - set(declared)}"
        for name, port in declared.items():
            if name not in outputs:
                assert port.optional, f"{type_name}.{name} is required but missing"
                continue
            where = f"{type_name}.{name}"
            if port.kind == "metrics":
                assert isinstance(outputs[name], dict) and outputs[name], where
                for key, value in outputs[name].items():
                    assert isinstance(key, str)
                    _check_tensor(f"{where}[{key}]", port, value, inputs, device)
            else:
                _check_tensor(where, port, outputs[name], inputs, device)


@pytest.mark.parametrize("type_name", sorted(CASES))
def test_state_dict_round_trip_reproduces_outputs(type_name: str) -> None:
    torch.manual_seed(1)
    params, overrides = CASES[type_name]
    registry = NodeRegistry()
    first = registry.create(type_name, "a", params)
    if first.has_statistical_init():
        first.fit([_inputs(first, overrides, "cpu") for _ in range(2)])
    torch.manual_seed(2)  # a different random init for the copy
    second = registry.create(type_name, "b", params)
    second.load_state_dict(first.state_dict())
    first.eval()
    second.eval()
    inputs = _inputs(first, overrides, "cpu")
    a, b = first(**inputs), second(**inputs)
    for key in a:
        if isinstance(a[key], dict):
            for k in a[key]:
                torch.testing.assert_close(a[key][k], b[key][k])
        else:
            torch.testing.assert_close(a[key], b[key])


@pytest.mark.parametrize("type_name", sorted(CASES))
def test_bad_params_are_invalid_argument(type_name: str) -> None:
    from cuvis_cluster.errors import InvalidArgument

    params = {**CASES[type_name][0], "no_such_param": 1}
    if type_name == "ZScoreNormalizerGlobal":  # upstream YAML passes `hidden`: extras are ignored by design
        assert NodeRegistry().create(type_name, "x", params).num_channels == C
        return
    with pytest.raises(InvalidArgument) as info:
        NodeRegistry().create(type_name, "x", params)
    assert "'x'" in str(info.value) and "no_such_param" in str(info.value)


def test_unknown_type_names_the_class_and_node() -> None:
    from cuvis_cluster.errors import InvalidArgument

    with pytest.raises(InvalidArgument, match="NoSuchNode") as info:
        NodeRegistry().create("NoSuchNode", "x", {})
    assert info.value.field == "x"
    # A wrong full path is not matched by its last component any more.
    with pytest.raises(InvalidArgument, match=r"cuvis_ai\.anomaly\.rx_detector\.RXGlobal") as info:
        NodeRegistry().create("cuvis_ai.anomaly.rx_detector.RXGlobal", "rx", {"num_channels": 3})
    assert info.value.field == "rx"


def test_native_classes_serve_their_full_names() -> None:
    from cuvis_cluster.engine.nodes.base import full_name, native_index

    index = native_index()
    for cls in BUILTIN.values():
        assert index[full_name(cls)] is cls
        for upstream in cls.UPSTREAM_CLASSES:
            assert index[upstream] is cls
    rx = next(c for c in BUILTIN.values() if c.__name__ == "RXGlobal")
    for name in (full_name(rx), *rx.UPSTREAM_CLASSES):
        node = NodeRegistry().create(name, "rx", {"num_channels": 3})
        assert type(node) is rx and node.class_name == name


def test_short_names_are_native_only_and_deprecated(caplog) -> None:
    from cuvis_cluster.engine.nodes import base

    base._WARNED_SHORT.discard("BinaryDecider")
    with caplog.at_level("WARNING"):
        node = NodeRegistry().create("BinaryDecider", "d", {})
    assert "deprecated" in caplog.text and "BinaryDecider" in caplog.text
    # Saved back under the full name, not the short one.
    assert "." in node.class_name and node.class_name.endswith(".BinaryDecider")
