"""The node model: typed ports, a registry, statistical fitting and trainable buffers.

A node is a ``torch.nn.Module`` that maps named input tensors to named output tensors. Tensors are
batched BHWC (batch, height, width, channels) unless a port says otherwise. The class declares

* ``INPUTS`` / ``OUTPUTS``: port name -> :class:`Port` (dtype, shape, optional)
* ``CATEGORY`` and ``TAGS``: for discovery (names of the public ``NodeCategory`` / ``NodeTag`` enums,
  lower case, without prefix: ``"model"``, ``"hyperspectral"``)
* ``STAGES``: the execution stages in which the graph runs it (losses and metrics skip INFERENCE)
* ``TRAINABLE_BUFFERS``: buffers that :meth:`Node.unfreeze` turns into parameters for gradient training

A node with a statistical initialisation overrides :meth:`Node.fit`, which receives an iterable of
input dicts (one per train batch, already computed by the node's ancestors).

Registration happens with :func:`register`; the registry is the only list of node types that
discovery, validation and the pipeline builder read.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from cuvis_cluster.errors import FailedPrecondition, InvalidArgument

DTYPES = ("float32", "float64", "int32", "int64", "uint8", "bool", "float16", "uint16")
ANY_DTYPE = "any"  # accepts every dtype; reported as float32 to clients
TORCH_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float64": torch.float64,
    "int32": torch.int32,
    "int64": torch.int64,
    "uint8": torch.uint8,
    "bool": torch.bool,
    "float16": torch.float16,
    "uint16": torch.uint16,
}


class Stage(enum.Enum):
    TRAIN = "train"
    VAL = "val"
    TEST = "test"
    INFERENCE = "inference"


PORT_KINDS = ("tensor", "metrics")

ALL_STAGES = frozenset(Stage)
EVAL_STAGES = frozenset({Stage.TRAIN, Stage.VAL, Stage.TEST})


@dataclass(frozen=True)
class Port:
    """One input or output of a node.

    ``shape`` entries are ints (fixed size), ``-1`` (any size) or symbolic names such as ``"C"``;
    a symbolic name is reported as -1 and only its rank matters for compatibility.
    """

    dtype: str
    shape: tuple[int | str, ...]
    optional: bool = False
    description: str = ""
    # "tensor": one tensor of ``dtype``/``shape``. "metrics": a ``dict[str, Tensor]`` of 0-d tensors of
    # ``dtype`` (``shape`` is ``()``); trainers log each entry as ``<node_name>/<key>``, Inference reports
    # them as metrics.
    kind: str = "tensor"

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES and self.dtype != ANY_DTYPE:
            raise ValueError(f"unknown port dtype {self.dtype!r}")
        if self.kind not in PORT_KINDS:
            raise ValueError(f"unknown port kind {self.kind!r}")

    @property
    def wire_shape(self) -> tuple[int, ...]:
        return tuple(d if isinstance(d, int) else -1 for d in self.shape)

    @property
    def wire_dtype(self) -> str:
        return "float32" if self.dtype == ANY_DTYPE else self.dtype

    def compatible_with(self, target: Port) -> str | None:
        """Why an output with this spec cannot feed ``target``, or None when it can."""
        if self.kind != target.kind:
            return f"a {self.kind} output cannot feed a {target.kind} input"
        if ANY_DTYPE not in (self.dtype, target.dtype) and self.dtype != target.dtype:
            return f"dtype {self.dtype} does not match {target.dtype}"
        if len(self.shape) != len(target.shape):
            return f"rank {len(self.shape)} does not match {len(target.shape)}"
        for a, b in zip(self.shape, target.shape, strict=True):
            if isinstance(a, int) and isinstance(b, int) and a != -1 and b != -1 and a != b:
                return f"shape {self.wire_shape} does not match {target.wire_shape}"
        return None


class Node(nn.Module):
    """Base class of every pipeline node."""

    INPUTS: ClassVar[dict[str, Port]] = {}
    OUTPUTS: ClassVar[dict[str, Port]] = {}
    CATEGORY: ClassVar[str] = "transform"
    TAGS: ClassVar[tuple[str, ...]] = ()
    # Not a ClassVar: the class sets the default, and an instance may narrow it (a metric node's
    # ``execution_stages``); the pipeline reads ``node.STAGES``.
    STAGES: frozenset[Stage] = ALL_STAGES
    TRAINABLE_BUFFERS: ClassVar[tuple[str, ...]] = ()
    DESCRIPTION: ClassVar[str] = ""
    type_name: ClassVar[str] = ""  # set by @register

    def __init__(self, **params: Any) -> None:
        super().__init__()
        self.params: dict[str, Any] = dict(params)
        self.name: str = ""  # set by the pipeline
        self.fitted = not self.has_statistical_init()

    # -- overridable -----------------------------------------------------------------------------
    def forward(self, **inputs: torch.Tensor) -> dict[str, Any]:  # pragma: no cover - abstract
        raise NotImplementedError

    def fit(self, batches: Iterable[Mapping[str, torch.Tensor]]) -> None:
        """Statistical initialisation from the train split; nodes that have one override this."""

    def on_epoch_start(self, epoch: int) -> None:
        """Called by trainers at each epoch (temperature schedules and the like)."""

    # -- introspection ---------------------------------------------------------------------------
    def input_ports(self) -> dict[str, Port]:
        """This instance's inputs: the class ports, with sizes its params fix (e.g. ``C=num_channels``)."""
        return dict(self.INPUTS)

    def output_ports(self) -> dict[str, Port]:
        """This instance's outputs (see :meth:`input_ports`)."""
        return dict(self.OUTPUTS)

    @classmethod
    def has_statistical_init(cls) -> bool:
        return cls.fit is not Node.fit

    @classmethod
    def has_learnable_params(cls) -> bool:
        return bool(cls.TRAINABLE_BUFFERS) or "learnable" in cls.TAGS

    def require_fitted(self) -> None:
        if not self.fitted:
            raise FailedPrecondition(
                f"node {self.name or self.type_name!r} ({self.type_name}) needs statistical training "
                "(Train with TRAINER_TYPE_STATISTICAL) or weights (LoadPipelineWeights) before it can run"
            )

    # -- trainable buffers -----------------------------------------------------------------------
    def unfreeze(self) -> None:
        """Turn the TRAINABLE_BUFFERS into parameters so an optimiser can update them.

        Parameters the node always has (an MLP's weights) get ``requires_grad`` back, so that
        ``freeze()`` followed by ``unfreeze()`` restores a trainable node.
        """
        for name in self.TRAINABLE_BUFFERS:
            value = getattr(self, name)
            if isinstance(value, nn.Parameter):
                value.requires_grad_(True)
                continue
            del self._buffers[name]
            self.register_parameter(name, nn.Parameter(value.detach().clone(), requires_grad=True))
        for param in self.parameters():
            param.requires_grad_(True)

    def freeze(self) -> None:
        """Turn the TRAINABLE_BUFFERS back into buffers and stop gradients of all other parameters."""
        for name in self.TRAINABLE_BUFFERS:
            value = getattr(self, name)
            if isinstance(value, nn.Parameter):
                del self._parameters[name]
                self.register_buffer(name, value.detach().clone())
        for param in self.parameters():
            param.requires_grad_(False)

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False):
        # A checkpoint written while unfrozen stores parameters; loading into buffers (or the reverse)
        # must work, so match by name whatever the kind.
        result = super().load_state_dict(state_dict, strict=strict, assign=assign)
        if self.has_statistical_init() and state_dict:
            self.fitted = True
        return result


NodeType = type[Node]

# Built-in catalogue: type name -> class. Plugins extend a per-session copy (see NodeRegistry).
BUILTIN: dict[str, NodeType] = {}


def register(cls: NodeType) -> NodeType:
    """Class decorator that adds a node type to the built-in catalogue under its class name."""
    name = cls.__name__
    if name in BUILTIN and BUILTIN[name] is not cls:
        raise ValueError(f"node type {name} registered twice")
    cls.type_name = name
    BUILTIN[name] = cls
    return cls


class NodeRegistry:
    """The node types one session can instantiate: the built-ins plus that session's plugins."""

    def __init__(self, extra: Mapping[str, NodeType] | None = None, sources: Mapping[str, str] | None = None):
        self._extra: dict[str, NodeType] = dict(extra or {})
        self._sources: dict[str, str] = dict(sources or {})  # type name -> plugin name

    def add(self, cls: NodeType, plugin: str) -> None:
        if not cls.type_name:
            cls.type_name = cls.__name__
        self._extra[cls.type_name] = cls
        self._sources[cls.type_name] = plugin

    def types(self) -> dict[str, NodeType]:
        return {**BUILTIN, **self._extra}

    def plugin_of(self, type_name: str) -> str | None:
        return self._sources.get(type_name)

    def get(self, type_name: str) -> NodeType:
        # Accept upstream's fully qualified class names by their last component.
        short = type_name.rsplit(".", 1)[-1]
        cls = self._extra.get(short) or BUILTIN.get(short)
        if cls is None:
            known = ", ".join(sorted(self.types()))
            raise InvalidArgument(f"unknown node type {type_name!r}; known types: {known}")
        return cls

    def create(self, type_name: str, name: str, params: Mapping[str, Any]) -> Node:
        cls = self.get(type_name)
        try:
            node = cls(**dict(params))
        except TypeError as exc:
            raise InvalidArgument(f"node {name!r} ({cls.type_name}): bad params: {exc}", field=name) from exc
        node.name = name
        return node
