"""A pipeline's weights file, in upstream CUVIS.AI's layout.

The file is ``torch.save({"state_dict": {<node name>: {<key>: tensor}}, "metadata": {...}})`` with an entry
for every node of the pipeline (empty for nodes without state), read back with ``weights_only=True``. Each
node's keys are its ``state_dict()`` keys, which for a native node equal upstream's keys for the class it
serves, so upstream's ``.pt`` files load here and ours load upstream.

``strict`` means what it means upstream: a key of real state that the file lacks, a key the node does not
have, or an entry for a node the pipeline does not have, is an error naming the node and the key. An empty
(or absent) entry of a node without state is always fine. Everything is checked before anything is copied
(a mismatch leaves the pipeline untouched). A non-strict load never drops state silently: a node that has
state but received none of it (or only part of it) is marked unfitted, so the next Inference fails with
FailedPrecondition naming it.

Also read:

* Lightning checkpoints (``.ckpt``, ours or upstream's) through :mod:`cuvis_cluster.engine.checkpoints`;
* files of earlier versions of this project (deprecated): their node keys are renamed by the node's
  ``upgrade_state_dict`` (Deep SVDD ``net.0.weight`` -> ``net.fc1.weight``, ``center`` ->
  ``_tracked_center``), and the values they stored for hparams (a decider's ``threshold``/``quantile``, the
  selector's ``temperature``) become the node's hparams. A warning is logged once per load.
"""

from __future__ import annotations

import importlib
import io
import logging
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from cuvis_cluster.errors import InvalidArgument

log = logging.getLogger(__name__)

# Keys that earlier versions of this project stored as state and that are hparams now (node attribute name).
LEGACY_HPARAM_KEYS = ("threshold", "quantile", "temperature")


def weights_bytes(payload: Mapping[str, Any]) -> bytes:
    """``payload`` (see the module docstring) as the bytes of a ``.pt`` file."""
    buf = io.BytesIO()
    torch.save(dict(payload), buf)
    return buf.getvalue()


def weights_payload(nodes: Mapping[str, nn.Module], metadata: Mapping[str, Any] | None = None) -> dict:
    """Upstream's layout for ``nodes``: an entry for every node (empty for stateless ones), CPU tensors."""
    state = {
        name: {k: v.detach().cpu().clone() for k, v in node.state_dict().items()}
        for name, node in nodes.items()
    }
    return {"state_dict": state, "metadata": dict(metadata or {})}


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


def _checkpoint_states(payload: Any, names: list[str]) -> dict[str, dict[str, torch.Tensor]] | None:
    """Per-node states of a Lightning checkpoint, or None when ``payload`` is not one."""
    try:  # imported here: the checkpoint reader is only needed for .ckpt files
        checkpoints = importlib.import_module("cuvis_cluster.engine.checkpoints")
    except ModuleNotFoundError:
        return None
    if not checkpoints.is_checkpoint(payload):
        return None
    return dict(checkpoints.node_states(payload, names))


def node_states_of(payload: Any, names: list[str]) -> Mapping[str, Any]:
    """The ``{node: {key: tensor}}`` part of a weights payload or a Lightning checkpoint."""
    states = _checkpoint_states(payload, names)
    if states is not None:
        return states
    if not isinstance(payload, Mapping) or not isinstance(payload.get("state_dict"), Mapping):
        keys = list(payload.keys())[:5] if isinstance(payload, Mapping) else type(payload).__name__
        raise InvalidArgument(
            "weights: expected {'state_dict': {node: {name: tensor}}, 'metadata': {...}} or a Lightning "
            f"checkpoint, got {keys}",
            field="weights",
        )
    return payload["state_dict"]


def _upgrade(node: nn.Module, name: str, part: Mapping[str, Any], legacy: list[str]) -> dict[str, Any]:
    """A node's entry with earlier layouts translated: renamed keys, hparams taken out of the state."""
    upgrade = getattr(node, "upgrade_state_dict", None)
    out = dict(upgrade(part)) if callable(upgrade) else dict(part)
    if out.keys() != part.keys():
        legacy.append(name)  # renamed keys: this project's earlier layout
    own = node.state_dict()
    hparams = {}
    for key in LEGACY_HPARAM_KEYS:
        value = out.get(key)
        if key not in own and isinstance(value, torch.Tensor) and value.numel() == 1 and hasattr(node, key):
            hparams[key] = float(value)
            del out[key]
    if hparams:
        legacy.append(name)
        out["\0hparams"] = hparams  # applied after every check passed (see load_node_states)
    return out


def _apply_hparams(node: nn.Module, hparams: Mapping[str, float]) -> None:
    setter = getattr(node, "set_thresholds", None)
    thresholds = {k: v for k, v in hparams.items() if k in getattr(node, "THRESHOLD_PARAMS", ())}
    if thresholds and callable(setter):
        setter(**thresholds)
    for key, value in hparams.items():
        if key not in thresholds:
            setattr(node, key, value)


def load_node_states(nodes: Mapping[str, nn.Module], payload: Any, strict: bool = True) -> None:
    """Copy the per-node states of ``payload`` into ``nodes``, after checking every entry.

    ``payload`` is upstream's ``{"state_dict": ..., "metadata": ...}`` (or this project's earlier layout of
    it) or a Lightning checkpoint. See the module docstring for ``strict``. A tensor whose shape differs
    from the node's is always an error. InvalidArgument names what does not fit.
    """
    given = node_states_of(payload, list(nodes))
    expected = {name: node.state_dict() for name, node in nodes.items()}
    legacy: list[str] = []
    upgraded: dict[str, dict[str, Any]] = {}
    unexpected: list[str] = []
    for n, part in given.items():
        if n not in expected:
            unexpected.append(f"{n} (no such node in the pipeline)")
            continue
        if not isinstance(part, Mapping):
            raise InvalidArgument(f"weights: state of node {n!r} is not a mapping", field=f"weights.{n}")
        upgraded[n] = _upgrade(nodes[n], n, part, legacy)
        unexpected.extend(f"{n}.{k}" for k in upgraded[n] if k != "\0hparams" and k not in expected[n])
    missing = [f"{n}.{k}" for n, sd in expected.items() for k in sd if k not in upgraded.get(n, {})]
    if legacy:
        log.warning(
            "weights: nodes %s use this project's earlier weights layout (deprecated); read as upstream's",
            ", ".join(sorted(set(legacy))),
        )
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
        part = upgraded.get(n, {})
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
        node = nodes[n]
        hparams = upgraded.get(n, {}).get("\0hparams")
        if hparams:
            _apply_hparams(node, hparams)
        if chosen:
            node.load_state_dict(chosen, strict=False)
        if len(chosen) == len(expected[n]):
            if expected[n] and hasattr(node, "fitted"):
                setattr(node, "fitted", True)  # noqa: B010  (nn.Module typing)
        elif hasattr(node, "fitted"):
            # Non-strict and the node got none or part of its state: it must not run on made-up values.
            setattr(node, "fitted", False)  # noqa: B010
            log.warning(
                "weights: node %r received %d of its %d state entries", n, len(chosen), len(expected[n])
            )
