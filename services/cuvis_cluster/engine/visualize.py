"""GetPipelineVisualization: the pipeline graph as PNG, SVG, DOT or Mermaid.

PNG and SVG are rendered by Graphviz (the ``graphviz`` Python package driving the ``dot`` binary); DOT is
the Graphviz source itself and Mermaid a ``flowchart`` description. The graph is built from the pipeline
*config* (nodes, their types and the port-to-port connections), so a ``config_content`` sent without a
session renders without instantiating any node (and without needing the plugins it might name).
"""

from __future__ import annotations

import json
from types import ModuleType
from typing import TYPE_CHECKING, Any

from cuvis_cluster.engine import schemas
from cuvis_cluster.engine.bounds import document_text, parse_yaml
from cuvis_cluster.engine.nodes import BUILTIN
from cuvis_cluster.engine.nodes.base import native_index
from cuvis_cluster.engine.nodes.classes import builtin_manifest
from cuvis_cluster.errors import FailedPrecondition, InvalidArgument, Unimplemented

if TYPE_CHECKING:
    import graphviz

FORMATS = ("png", "svg", "dot", "graphviz", "mermaid")
DEFAULT_FORMAT = "png"
MAX_CONFIG_BYTES = 1 << 20
MAX_ELEMENTS = 2000

# Fill colours per node category (names of the public NodeCategory enum, lower case).
CATEGORY_COLOURS = {
    "source": "#d6eaf8",
    "transform": "#e8f6f3",
    "model": "#fdebd0",
    "loss": "#fadbd8",
    "metric": "#e8daef",
    "visualizer": "#fcf3cf",
    "sink": "#eaeded",
}


def normalize_format(fmt: str | None) -> str:
    value = (fmt or "").strip().lower() or DEFAULT_FORMAT
    if value not in FORMATS:
        raise InvalidArgument(
            f"unknown visualization format {fmt!r}; expected one of {', '.join(FORMATS)}", field="format"
        )
    return value


def parse_config_content(content: str | bytes) -> dict[str, Any]:
    """A pipeline config from YAML or JSON text (a trainrun with an inline pipeline also works)."""
    raw = content.encode("utf-8", "surrogatepass") if isinstance(content, str) else bytes(content)
    if len(raw) > MAX_CONFIG_BYTES:
        raise InvalidArgument(
            f"config_content is {len(raw)} bytes; the limit is {MAX_CONFIG_BYTES} bytes",
            field="config_content",
        )
    # YAML (a superset of JSON) with the bounds every client document gets: nesting, values, UTF-8
    data = parse_yaml(document_text(raw, "config_content"), "config_content")
    if isinstance(data, dict) and "nodes" not in data and isinstance(data.get("pipeline"), dict):
        data = data["pipeline"]
    if not isinstance(data, dict):
        raise InvalidArgument(
            "config_content must be a pipeline mapping with 'nodes'", field="config_content"
        )
    return data


def graph_from_config(config: dict[str, Any], categories: dict[str, str] | None = None) -> dict[str, Any]:
    """Validated ``{"name", "nodes": [(name, type, category)], "edges": [(src, sport, dst, dport)]}``."""
    nodes = config.get("nodes") if isinstance(config, dict) else None
    connections = config.get("connections") if isinstance(config, dict) else None
    count = (len(nodes) if isinstance(nodes, list) else 0) + (
        len(connections) if isinstance(connections, list) else 0
    )
    if count > MAX_ELEMENTS:
        raise InvalidArgument(
            f"the pipeline has {count} nodes and connections; the visualization limit is {MAX_ELEMENTS}",
            field="config_content",
        )
    model = schemas.validate("pipeline", config, prefix="config_content")
    assert isinstance(model, schemas.PipelineConfig)  # what validate("pipeline", ...) builds

    categories = dict(categories or {})
    out_nodes = []
    for node in model.nodes:
        category = categories.get(node.name)
        if category is None:
            category = _category_of(node.type)
        out_nodes.append((node.name, node.type, category))
    edges = [(c.source_node, c.source_port, c.target_node, c.target_port) for c in model.connections]
    return {"name": model.metadata.name or "pipeline", "nodes": out_nodes, "edges": edges}


def _category_of(class_name: str) -> str:
    """The category of a class by its exact name, without importing anything: native classes, then
    upstream's builtin manifest (hosted cuvis-ai classes); "" when unknown (e.g. a plugin class)."""
    cls = native_index().get(class_name) if "." in class_name else BUILTIN.get(class_name)
    if cls is not None:
        return cls.CATEGORY
    entry = next((e for e in builtin_manifest() if e["class_name"] == class_name), None)
    return str(entry.get("category") or "") if entry else ""


def _graphviz() -> ModuleType:
    """The ``graphviz`` package, imported on first use: a worker installed without it still serves every
    other RPC, and the Mermaid format, and answers PNG/SVG/DOT with UNIMPLEMENTED."""
    try:
        import graphviz
    except ImportError as exc:
        raise Unimplemented(
            f"pipeline visualization as PNG, SVG or DOT is not available on this worker ({exc}); "
            "the 'mermaid' format works without it"
        ) from None
    return graphviz


def to_digraph(graph: dict[str, Any]) -> graphviz.Digraph:
    dot = _graphviz().Digraph(name=graph["name"], graph_attr={"rankdir": "LR", "fontname": "Helvetica"})
    dot.attr("node", shape="box", style="rounded,filled", fontname="Helvetica", fontsize="11")
    dot.attr("edge", fontname="Helvetica", fontsize="9")
    known = set()
    for name, type_name, category in graph["nodes"]:
        known.add(name)
        dot.node(name, label=f"{name}\n{type_name}", fillcolor=CATEGORY_COLOURS.get(category, "#ffffff"))
    for src, sport, dst, dport in graph["edges"]:
        for end in (src, dst):
            if end not in known:  # a connection to a node the config does not declare: show it dashed
                known.add(end)
                dot.node(end, label=f"{end}\n(undeclared)", style="dashed")
        label = sport if sport == dport else f"{sport} → {dport}"
        dot.edge(src, dst, label=label)
    return dot


def _mermaid_text(text: str) -> str:
    return text.replace('"', "#quot;").replace("\n", "<br/>")


def to_mermaid(graph: dict[str, Any]) -> str:
    ids: dict[str, str] = {}
    lines = ["flowchart LR"]
    for name, type_name, _category in graph["nodes"]:
        ids[name] = f"n{len(ids)}"
        lines.append(
            f'    {ids[name]}["{_mermaid_text(name)}<br/><small>{_mermaid_text(type_name)}</small>"]'
        )
    for src, sport, dst, dport in graph["edges"]:
        for end in (src, dst):
            if end not in ids:
                ids[end] = f"n{len(ids)}"
                lines.append(f'    {ids[end]}["{_mermaid_text(end)}"]')
        label = sport if sport == dport else f"{sport} → {dport}"
        lines.append(f'    {ids[src]} -->|"{_mermaid_text(label)}"| {ids[dst]}')
    return "\n".join(lines) + "\n"


def render(graph: dict[str, Any], fmt: str) -> bytes:
    """Bytes of ``graph`` in ``fmt`` (already normalized)."""
    if fmt == "mermaid":
        return to_mermaid(graph).encode()
    dot = to_digraph(graph)
    if fmt in ("dot", "graphviz"):
        return dot.source.encode()
    graphviz = _graphviz()
    try:
        return dot.pipe(format=fmt)
    except graphviz.ExecutableNotFound:
        raise FailedPrecondition(
            "the Graphviz 'dot' program is not installed on this worker (Debian: apt-get install graphviz); "
            "the 'dot' and 'mermaid' formats work without it"
        ) from None
    except graphviz.CalledProcessError as exc:
        detail = (exc.stderr or b"").decode(errors="replace").strip()
        raise InvalidArgument(
            f"Graphviz could not render the pipeline: {detail or exc}", field="config_content"
        ) from None


def visualize_config(
    config: dict[str, Any], fmt: str | None, categories: dict[str, str] | None = None
) -> tuple[bytes, str]:
    fmt = normalize_format(fmt)
    return render(graph_from_config(config, categories), fmt), fmt


def visualize_content(content: str | bytes, fmt: str | None) -> tuple[bytes, str]:
    fmt = normalize_format(fmt)
    return render(graph_from_config(parse_config_content(content)), fmt), fmt


def visualize_pipeline(pipeline: Any, fmt: str | None) -> tuple[bytes, str]:
    """Render a live ``Pipeline`` (its config, with categories from the node instances)."""
    fmt = normalize_format(fmt)
    config = pipeline.to_config()
    categories = {name: getattr(node, "CATEGORY", "") for name, node in pipeline.nodes.items()}
    return render(graph_from_config(json.loads(json.dumps(config, default=str)), categories), fmt), fmt
