"""A pipeline's weights file: ``{"state_dict": {node: {name: tensor}}, "metadata": {...}}`` saved by
``torch.save``, read back with ``weights_only=True``, and checked against the pipeline before anything is
copied in (a mismatch leaves the pipeline untouched)."""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from cuvis_cluster.errors import InvalidArgument


def weights_bytes(payload: Mapping[str, Any]) -> bytes:
    """``payload`` (see the module docstring) as the bytes of a ``.pt`` file."""
    buf = io.BytesIO()
    torch.save(dict(payload), buf)
    return buf.getvalue()


def read_weights(data: bytes, what: str = "weights") -> Any:
    """``torch.load(weights_only=True)`` of a file's bytes; anything that is not plain tensors/containers is
    refused with InvalidArgument naming ``what``."""
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError, RuntimeError (not a zip), EOFError...
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InvalidArgument(
            f"{what}: not a loadable weights file (only tensors and plain containers are accepted; "
            f"torch.load with weights_only=True said: {text})",
            field=what,
        ) from None


def _has(given: Mapping[str, Any], node: str, key: str) -> bool:
    part = given.get(node)
    return isinstance(part, Mapping) and key in part


def load_node_states(nodes: Mapping[str, nn.Module], payload: Any, strict: bool = True) -> None:
    """Copy the ``state_dict`` part of ``payload`` into ``nodes``, after checking every entry.

    ``strict``: missing and unexpected keys are errors; otherwise they are skipped. A tensor whose shape
    differs from the node's is always an error. InvalidArgument names what does not fit.
    """
    if not isinstance(payload, Mapping) or not isinstance(payload.get("state_dict"), Mapping):
        keys = list(payload.keys())[:5] if isinstance(payload, Mapping) else type(payload).__name__
        raise InvalidArgument(
            "weights: expected {'state_dict': {node: {name: tensor}}, 'metadata': {...}}, "
            f"got {keys}",
            field="weights",
        )
    given: Mapping[str, Any] = payload["state_dict"]
    expected = {name: node.state_dict() for name, node in nodes.items()}
    missing = [f"{n}.{k}" for n, sd in expected.items() for k in sd if not _has(given, n, k)]
    unexpected: list[str] = []
    for n, part in given.items():
        if n not in expected:
            unexpected.append(f"{n} (no such node)")
            continue
        if not isinstance(part, Mapping):
            raise InvalidArgument(f"weights: state of node {n!r} is not a mapping", field=f"weights.{n}")
        unexpected.extend(f"{n}.{k}" for k in part if k not in expected[n])
    if strict and (missing or unexpected):
        parts = []
        if missing:
            parts.append(f"missing keys: {', '.join(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {', '.join(unexpected)}")
        raise InvalidArgument(
            "weights do not match the pipeline (strict=true): " + "; ".join(parts), field="weights"
        )
    problems = []
    plan: dict[str, dict[str, torch.Tensor]] = {}
    for n, sd in expected.items():
        part = given.get(n)
        if not isinstance(part, Mapping):
            continue
        chosen = {}
        for k, current in sd.items():
            if k not in part:
                continue
            value = part[k]
            if not isinstance(value, torch.Tensor):
                problems.append(f"{n}.{k}: not a tensor")
            elif tuple(value.shape) != tuple(current.shape):
                problems.append(
                    f"{n}.{k}: shape {tuple(value.shape)} in the file, {tuple(current.shape)} here"
                )
            else:
                chosen[k] = value
        plan[n] = chosen
    if problems:
        raise InvalidArgument("weights do not fit the pipeline: " + "; ".join(problems), field="weights")
    for n, chosen in plan.items():
        if chosen:
            nodes[n].load_state_dict(chosen, strict=False)
