"""Lightning ``.ckpt`` files as weights: ours and upstream's (contract C5).

A Lightning checkpoint is a mapping with ``pytorch-lightning_version``, ``epoch``, ``global_step`` and a
flat ``state_dict`` of the LightningModule (``{"<module path>.<key>": tensor}``), plus the optimizer,
scheduler, loop and callback states. Two layouts are understood:

* **ours** (:class:`~cuvis_cluster.engine.training.lightning_module.PipelineModule`): keys
  ``pipeline.nodes.<node name>.<key>``; the module also writes a ``cuvis_cluster`` entry (the node
  names, the trainable parameter names, the optimizer and scheduler) that decides whether a later
  Train can resume the optimizer state and the epoch counter;
* **upstream** (``cuvis_ai_core.training.trainers.GradientTrainer``): keys
  ``pipeline_modules.<i>.<key>``, where ``i`` indexes the pipeline's nodes in the order of the
  config's ``nodes`` list (upstream adds every node to its graph in that order before connecting).

:func:`node_states` turns either into ``{node name: {key: tensor}}``, with an entry (maybe empty) for
every node, i.e. the ``state_dict`` part of a weights file. Files are read by
:func:`cuvis_cluster.engine.weights.read_weights` (``torch.load(weights_only=True)``): both layouts hold
only tensors, numbers, strings and plain containers, so no extra safe globals are needed, and a file
that pickles anything else is refused there.

:class:`CheckpointSource` is what a session remembers about the checkpoint its weights came from
(:func:`remember` / :func:`remembered`), so that the next Train(GRADIENT) resumes from it.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from cuvis_cluster.errors import InvalidArgument

LIGHTNING_KEY = "pytorch-lightning_version"
OURS_ENTRY = "cuvis_cluster"  # our extra entry in the checkpoints our trainer writes
OURS_PREFIX = "pipeline.nodes."
UPSTREAM_PREFIX = "pipeline_modules."
FORMAT = 1
_UPSTREAM_KEY = re.compile(r"^pipeline_modules\.(\d+)\.(.+)$")
_ATTR = "_cuvis_checkpoint_source"


def is_checkpoint(payload: Any) -> bool:
    """True for a Lightning checkpoint (as opposed to a ``{"state_dict": {node: {...}}}`` weights file)."""
    if not isinstance(payload, Mapping) or not isinstance(payload.get("state_dict"), Mapping):
        return False
    if LIGHTNING_KEY in payload:
        return True
    # Lightning always writes the version; also accept a stripped file with a flat, known state dict.
    state = payload["state_dict"]
    return bool(state) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) and k.startswith((OURS_PREFIX, UPSTREAM_PREFIX))
        for k, v in state.items()
    )


def layout(payload: Mapping[str, Any]) -> str:
    """``"ours"``, ``"upstream"`` or ``"unknown"`` for a checkpoint's state-dict keys."""
    keys = [k for k in payload.get("state_dict", {}) if isinstance(k, str)]
    if isinstance(payload.get(OURS_ENTRY), Mapping) or (
        keys and all(k.startswith(OURS_PREFIX) for k in keys)
    ):
        return "ours"
    if keys and all(_UPSTREAM_KEY.match(k) for k in keys):
        return "upstream"
    if not keys:  # a checkpoint of a pipeline without any state: either layout reads it
        return "ours"
    return "unknown"


def _fail(what: str, message: str) -> InvalidArgument:
    return InvalidArgument(f"{what}: {message}", field=what)


def node_states(
    payload: Mapping[str, Any], node_names: Collection[str], *, what: str = "weights"
) -> dict[str, dict[str, torch.Tensor]]:
    """Per-node state dicts of a Lightning checkpoint (see the module docstring).

    ``node_names``: the pipeline's nodes in config order (the order matters for upstream's index-based
    keys). Every node gets an entry (empty when the checkpoint holds nothing for it). A key that names no
    node of the pipeline, a non-tensor value or a layout that is neither ours nor upstream's is an
    InvalidArgument naming ``what``; whether the keys fit the nodes is then the weights loader's
    business (``strict``).
    """
    names = list(node_names)
    state = payload.get("state_dict")
    if not isinstance(state, Mapping):
        raise _fail(what, "the checkpoint has no state_dict")
    out: dict[str, dict[str, torch.Tensor]] = {n: {} for n in names}
    kind = layout(payload)
    if kind == "unknown":
        sample = ", ".join(list(map(str, state))[:3])
        raise _fail(
            what,
            "not a checkpoint of a pipeline: expected state-dict keys 'pipeline.nodes.<node>.<key>' "
            f"(cuvis-cluster) or 'pipeline_modules.<i>.<key>' (cuvis-ai), got {sample}",
        )
    # longest node name first, so "a.b" wins over "a" when both exist
    by_length = sorted(names, key=len, reverse=True)
    unknown: list[str] = []
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise _fail(what, f"checkpoint entry {key!r} is not a tensor")
        if kind == "ours":
            rest = key[len(OURS_PREFIX) :]
            node = next((n for n in by_length if rest.startswith(n + ".")), None)
            if node is None:
                unknown.append(key)
                continue
            out[node][rest[len(node) + 1 :]] = value
        else:
            match = _UPSTREAM_KEY.match(key)
            assert match is not None
            index = int(match.group(1))
            if index >= len(names):
                unknown.append(key)
                continue
            out[names[index]][match.group(2)] = value
    if unknown:
        shown = ", ".join(unknown[:5]) + (f" (+{len(unknown) - 5} more)" if len(unknown) > 5 else "")
        raise _fail(
            what,
            f"checkpoint entries that belong to no node of this pipeline ({len(names)} nodes: "
            f"{', '.join(names)}): {shown}",
        )
    return out


def as_weights(
    payload: Mapping[str, Any], node_names: Collection[str], *, what: str = "weights"
) -> dict[str, Any]:
    """A checkpoint as a weights payload ``{"state_dict": {node: {...}}, "metadata": {}}``."""
    return {"state_dict": node_states(payload, node_names, what=what), "metadata": {}}


# -------------------------------------------------------------------------------------------------
# where a session's weights came from, and whether training can resume from it
# -------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CheckpointSource:
    """The checkpoint a pipeline's weights were loaded from."""

    path: str  # the resolved file ("" for bytes sent by the client)
    layout: str  # "ours" | "upstream"
    epoch: int  # Lightning's 0-based epoch at save time (-1: unknown)
    global_step: int
    # Our checkpoints carry optimizer/scheduler/loop state; kept to resume (the file may change later).
    payload: Mapping[str, Any] | None = field(default=None, repr=False, compare=False)

    @property
    def epochs_done(self) -> int:
        """How many epochs the checkpointed run had finished: where Lightning resumes (a checkpoint saved at
        an epoch's end counts that epoch as processed, not yet as completed)."""
        loops = (self.payload or {}).get("loops")
        try:
            progress = loops["fit_loop"]["epoch_progress"]["current"]  # type: ignore[index]
            return int(progress["processed"])
        except (KeyError, TypeError, ValueError):
            return self.epoch + 1 if self.epoch >= 0 else 0

    def describe(self) -> str:
        where = self.path or "uploaded bytes"
        owner = "cuvis-ai" if self.layout == "upstream" else "cuvis-cluster"
        return f"{owner} checkpoint {where} (epoch {self.epoch}, step {self.global_step})"


def source_of(payload: Any, path: str = "") -> CheckpointSource | None:
    """The :class:`CheckpointSource` of a loaded payload, None when it is not a Lightning checkpoint."""
    if not is_checkpoint(payload):
        return None
    kind = layout(payload)

    def _int(key: str) -> int:
        try:
            return int(payload.get(key, -1))
        except (TypeError, ValueError):
            return -1

    resumable = kind == "ours" and bool(payload.get("optimizer_states"))
    return CheckpointSource(
        path=path,
        layout=kind,
        epoch=_int("epoch"),
        global_step=_int("global_step"),
        payload=payload if resumable else None,
    )


def remember(pipeline: Any, source: CheckpointSource | None) -> None:
    """Record on the pipeline object that its weights came from ``source`` (None: from a weights file, or
    changed since). Kept on the pipeline, so a LoadPipeline that replaces it forgets the checkpoint."""
    pipeline.__dict__[_ATTR] = source


def remembered(pipeline: Any) -> CheckpointSource | None:
    value = getattr(pipeline, "__dict__", {}).get(_ATTR)
    return value if isinstance(value, CheckpointSource) else None


def resume_problem(source: CheckpointSource, trainable: list[str], optimizer: str, scheduler: str) -> str:
    """Why ``source`` cannot resume a run that trains ``trainable`` with ``optimizer``/``scheduler``
    ("" when it can): optimizer state only fits the same parameters and the same optimizer."""
    if source.layout != "ours":
        return "a cuvis-ai checkpoint's optimizer state follows cuvis-ai's parameter order; weights only"
    payload = source.payload or {}
    states = payload.get("optimizer_states") or []
    if len(states) != 1:
        return "the checkpoint holds no optimizer state"
    ours = payload.get(OURS_ENTRY)
    if isinstance(ours, Mapping):
        saved = list(ours.get("trainable") or [])
        if saved != trainable:
            return f"it trained {', '.join(saved) or 'nothing'}; this run trains {', '.join(trainable)}"
        if str(ours.get("optimizer", "")) != optimizer:
            return f"it used optimizer {ours.get('optimizer')!r}; this run uses {optimizer!r}"
        if str(ours.get("scheduler", "")) != scheduler:
            saved_scheduler = ours.get("scheduler") or "none"
            return f"it used scheduler {saved_scheduler!r}; this run uses {scheduler or 'none'!r}"
        return ""
    groups = states[0].get("param_groups") if isinstance(states[0], Mapping) else None
    count = sum(len(g.get("params", [])) for g in groups or [] if isinstance(g, Mapping))
    if count != len(trainable):
        return f"its optimizer state covers {count} parameters; this run trains {len(trainable)}"
    return ""
