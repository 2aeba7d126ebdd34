"""The built-in node catalogue.

Importing this package registers every built-in node type in :data:`base.BUILTIN`; discovery, pipeline
validation and the pipeline builder read that registry only.
"""

from __future__ import annotations

from . import (  # noqa: F401  (imported for registration)
    anomaly,
    conversion,
    deciders,
    deep_svdd,
    io,
    losses,
    metrics,
    normalization,
    preprocessing,
    selection,
    visualization,
)
from .base import BUILTIN, EVAL_STAGES, Node, NodeRegistry, Port, Stage, register

__all__ = ["BUILTIN", "EVAL_STAGES", "Node", "NodeRegistry", "Port", "Stage", "register"]
