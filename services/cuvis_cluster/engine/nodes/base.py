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
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
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
    # A fan-in input (upstream's ``PortSpec(variadic=True)``): several connections may feed it, and the
    # node gets a list of their values in connection order.
    variadic: bool = False
    # False: only a connection feeds it, never a batch key of the same name (an input of ours that the
    # upstream class it serves lacks, so that upstream pipelines run as they do upstream).
    from_batch: bool = True

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
    # The upstream full class names this class serves (e.g. "cuvis_ai.node.anomaly.rx_detector.RXGlobal");
    # it also serves its own full name (see :func:`full_name`).
    UPSTREAM_CLASSES: ClassVar[tuple[str, ...]] = ()
    # The full class name the config used (set on the instance by NodeRegistry.create); SavePipeline
    # writes it back.
    class_name: str = ""

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

_log = logging.getLogger(__name__)
_WARNED_SHORT: set[str] = set()


def full_name(cls: type) -> str:
    """``module.QualName`` of a class."""
    return f"{cls.__module__}.{cls.__qualname__}"


def preferred_name(cls: NodeType) -> str:
    """The full name a config should use for ``cls``: upstream's first name, else its own."""
    return cls.UPSTREAM_CLASSES[0] if cls.UPSTREAM_CLASSES else full_name(cls)


def register(cls: NodeType) -> NodeType:
    """Class decorator that adds a node type to the built-in catalogue under its class name."""
    name = cls.__name__
    if name in BUILTIN and BUILTIN[name] is not cls:
        raise ValueError(f"node type {name} registered twice")
    cls.type_name = name
    cls.class_name = preferred_name(cls)
    BUILTIN[name] = cls
    return cls


def native_index() -> dict[str, NodeType]:
    """Every full class name a native class serves: its own, and its ``UPSTREAM_CLASSES``."""
    index: dict[str, NodeType] = {}
    for cls in BUILTIN.values():
        for key in (full_name(cls), *cls.UPSTREAM_CLASSES):
            other = index.get(key)
            if other is not None and other is not cls:
                raise ValueError(f"{key} is served by both {other.__name__} and {cls.__name__}")
            index[key] = cls
    return index


class NodeRegistry:
    """The node classes one session can instantiate, resolved by exact full class name.

    Order: a native class serving the name (its own full name or one of its ``UPSTREAM_CLASSES``), a
    class from this session's plugins, then an upstream ``cuvis_ai_core`` Node subclass from an
    allow-listed package, hosted through :mod:`.hosted` (imported lazily, only then). A bare short
    name (the old dialect) resolves among the native classes only, with a deprecation warning.
    """

    def __init__(
        self,
        extra: Mapping[str, NodeType] | None = None,
        sources: Mapping[str, str] | None = None,
        *,
        packages: Sequence[str] = ("cuvis_ai",),
        output_root: Path | None = None,
    ):
        self._extra: dict[str, NodeType] = {}  # full class name -> plugin class
        self._sources: dict[str, str] = {}  # full class name -> plugin name
        self.packages: tuple[str, ...] = tuple(packages)
        self.output_root = output_root
        self._hosted: dict[str, NodeType] = {}
        for key, cls in (extra or {}).items():
            self.add(cls, (sources or {}).get(key, ""), key if "." in key else None)

    def add(self, cls: NodeType, plugin: str, class_name: str | None = None) -> None:
        """Make a plugin class available to this session under its full class name."""
        if not cls.type_name:
            cls.type_name = cls.__name__
        key = class_name or preferred_name(cls)
        self._extra[key] = cls
        self._sources[key] = plugin

    def types(self) -> dict[str, NodeType]:
        """Every class this session can name without importing anything: native + plugin, by full name."""
        return {**{preferred_name(c): c for c in BUILTIN.values()}, **self._extra}

    def plugin_of(self, class_name: str) -> str | None:
        return self._sources.get(class_name)

    def clear_plugins(self, plugin: str | None = None) -> None:
        for key in [k for k, p in self._sources.items() if plugin is None or p == plugin]:
            self._extra.pop(key, None)
            self._sources.pop(key, None)

    def get(self, class_name: str, node: str = "") -> NodeType:
        field = node or "class_name"
        label = f"node {node!r}: " if node else ""
        if not isinstance(class_name, str) or not class_name:
            raise InvalidArgument(f"{label}class_name is empty", field=field)
        if "." not in class_name:
            return self._short(class_name, label, field)
        native = native_index().get(class_name)
        if native is not None:
            return native
        plugin_cls = self._extra.get(class_name)
        if plugin_cls is not None:
            return plugin_cls
        hosted = self._hosted.get(class_name)
        if hosted is not None:
            return hosted
        from . import classes
        from . import hosted as hosted_mod

        try:
            upstream = classes.import_node_class(class_name, self.packages, field)
        except InvalidArgument as exc:
            raise InvalidArgument(f"{label}{exc.message}", field=field) from None
        cls = hosted_mod.hosted_class(upstream, class_name, self.output_root)
        self._hosted[class_name] = cls
        return cls

    def _short(self, short: str, label: str, field: str) -> NodeType:
        cls = BUILTIN.get(short)
        if cls is None and short in self._extra:
            # A plugin of the deprecated manifest format registered this exact (short) name.
            return self._extra[short]
        if cls is None:
            plugin_hits = sorted(k for k in self._extra if k.rsplit(".", 1)[-1] == short)
            hint = f"; did you mean {', '.join(plugin_hits)}?" if plugin_hits else ""
            raise InvalidArgument(
                f"{label}unknown node class {short!r}: give the full class_name "
                f"(e.g. 'cuvis_ai.node.anomaly.rx_detector.RXGlobal'){hint}",
                field=field,
            )
        if short not in _WARNED_SHORT:
            _WARNED_SHORT.add(short)
            _log.warning(
                "deprecated: node class %r given by its short name; use the full class_name %r",
                short,
                preferred_name(cls),
            )
        return cls

    def canonical_name(self, class_name: str, cls: NodeType) -> str:
        """The name to write back for a node built from ``class_name``: the full name it was given, the
        name a plugin registered it under (a plugin's module is imported under a private name, which
        another session could not resolve), or the native class's preferred full name."""
        if "." in class_name or self._extra.get(class_name) is cls:
            return class_name
        return preferred_name(cls)

    def create(self, class_name: str, name: str, hparams: Mapping[str, Any]) -> Node:
        cls = self.get(class_name, name)
        try:
            node = cls(**dict(hparams))
        except InvalidArgument:
            raise
        except TypeError as exc:
            raise InvalidArgument(f"node {name!r} ({class_name}): bad hparams: {exc}", field=name) from exc
        node.name = name
        node.class_name = self.canonical_name(class_name, cls)
        return node

    def require_plugins(self, names: Sequence[str]) -> None:
        """The pipeline's ``plugins:`` list: each must be built in or loaded in this session."""
        loaded = set(self._sources.values())
        for plugin in names:
            if plugin == BUILTIN_PLUGIN or plugin in loaded:
                continue
            raise FailedPrecondition(
                f"plugin {plugin!r} is not loaded in this session: LoadPlugin it first with a manifest whose "
                "local 'path' lies under a plugin root (git or network sources are not fetched)",
                field="plugins",
            )


BUILTIN_PLUGIN = "cuvis_ai_builtin"
