"""Pipeline pictures when the optional ``graphviz`` package is missing: Mermaid still renders, the
Graphviz formats are UNIMPLEMENTED with a message saying what works, and nothing else is affected."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from cuvis_cluster.engine import visualize
from cuvis_cluster.errors import Unimplemented
from cuvis_cluster.wire.status import status_for

SHIPPED = Path(__file__).resolve().parents[2] / "configs" / "pipeline" / "rx_statistical.yaml"


def test_without_graphviz_mermaid_renders_and_png_is_unimplemented(monkeypatch):
    content = SHIPPED.read_text(encoding="utf-8")
    monkeypatch.setitem(sys.modules, "graphviz", None)  # makes `import graphviz` raise ImportError
    data, fmt = visualize.visualize_content(content, "mermaid")
    assert fmt == "mermaid" and data.decode().startswith("flowchart LR")
    for wanted in ("png", "svg", "dot"):
        with pytest.raises(Unimplemented) as info:
            visualize.visualize_content(content, wanted)
        assert "mermaid" in info.value.message
        assert status_for(info.value)[0].name == "UNIMPLEMENTED"
