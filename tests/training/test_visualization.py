"""GetPipelineVisualization over gRPC: SVG/PNG rendered by Graphviz, DOT and Mermaid text, limits."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import grpc
import pytest
import yaml
from trainlib import SMALL_DATA, pipeline_of, resolve, rpc_code, set_trainrun

from cuvis_cluster.wire.pb import pb

pytestmark = pytest.mark.integration


def visualize(stub, **fields) -> pb.GetPipelineVisualizationResponse:
    return stub.GetPipelineVisualization(pb.GetPipelineVisualizationRequest(**fields))


def svg_texts(data: bytes) -> list[str]:
    root = ET.fromstring(data)
    return [el.text for el in root.iter() if el.tag.endswith("text") and el.text]


def test_session_pipeline_renders_in_every_format(stub, session):
    trainrun = resolve(stub, session, "trainrun/channel_selector", SMALL_DATA)
    set_trainrun(stub, session, trainrun)
    pipeline = pipeline_of(trainrun)
    names = [n["name"] for n in pipeline["nodes"]]

    svg = visualize(stub, session_id=session, format="svg")
    assert svg.format == "svg"
    texts = svg_texts(svg.image_data)
    for name in names:
        assert name in texts, name
    assert "cuvis_ai.node.channel_selector.SoftChannelSelector" in texts

    png = visualize(stub, session_id=session)  # default format
    assert png.format == "png" and png.image_data.startswith(b"\x89PNG\r\n\x1a\n")

    dot = visualize(stub, session_id=session, format="dot").image_data.decode()
    assert dot.lstrip().startswith("digraph") and all(name in dot for name in names)
    mermaid = visualize(stub, session_id=session, format="mermaid").image_data.decode()
    assert mermaid.startswith("flowchart LR") and mermaid.count("-->") == len(pipeline["connections"])


def test_config_content_renders_without_a_session(stub, session):
    pipeline = resolve(stub, session, "pipeline/deep_svdd", config_type="pipeline")
    content = yaml.safe_dump(pipeline)
    svg = visualize(stub, config_content=content, format="SVG")
    texts = svg_texts(svg.image_data)
    assert all(node["name"] in texts for node in pipeline["nodes"])
    assert b"digraph" in visualize(stub, config_content=content, format="graphviz").image_data


def test_bad_requests_are_invalid_argument(stub, session):
    pipeline = resolve(stub, session, "pipeline/rx_statistical", config_type="pipeline")
    content = yaml.safe_dump(pipeline)
    assert (
        rpc_code(lambda: visualize(stub, config_content=content, format="gif"))
        == grpc.StatusCode.INVALID_ARGUMENT
    )
    huge = content + "\n# " + "x" * (1 << 20)
    assert (
        rpc_code(lambda: visualize(stub, config_content=huge, format="dot"))
        == grpc.StatusCode.INVALID_ARGUMENT
    )
    many = {"nodes": [{"name": f"n{i}", "type": "PerPixelUnitNorm"} for i in range(2001)]}
    code = rpc_code(lambda: visualize(stub, config_content=yaml.safe_dump(many), format="dot"))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert (
        rpc_code(lambda: visualize(stub, config_content="nodes: [", format="dot"))
        == grpc.StatusCode.INVALID_ARGUMENT
    )
    assert rpc_code(lambda: visualize(stub, format="svg")) == grpc.StatusCode.INVALID_ARGUMENT
    assert (
        rpc_code(lambda: visualize(stub, session_id=session, format="svg"))
        == grpc.StatusCode.FAILED_PRECONDITION
    )
