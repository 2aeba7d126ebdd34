"""Run an upstream ``cuvis_ai_core.node.Node`` subclass inside our pipeline graph.

:func:`hosted_class` builds, once per (upstream class, registry settings), a subclass of our
:class:`~cuvis_cluster.engine.nodes.base.Node` whose instances hold one upstream instance and
translate between the two node models:

* ports: ``INPUT_SPECS`` / ``OUTPUT_SPECS`` become :class:`Port` (torch dtypes by name; non-tensor
  ports such as TensorBoardMonitorNode's artifact lists accept any value);
* forward: inputs as keyword arguments plus upstream's ``context`` (a
  ``cuvis_ai_schemas.execution.Context``; the stage given by :meth:`HostedNode.set_stage`, else TRAIN
  while the module is in training mode and INFERENCE otherwise);
* statistical initialisation: defined only when the upstream class overrides
  ``statistical_initialization``; our ``fit(batches)`` hands it the same input dicts upstream's
  ``InputStream`` yields;
* gradient training: the upstream module is a child module, so its parameters reach our optimiser;
  ``freeze`` / ``unfreeze`` call upstream's (which turn ``TRAINABLE_BUFFERS`` into parameters);
* state dicts carry the upstream module's own keys, without a wrapper prefix (contract C4);
* files: an ``output_dir`` hparam (TensorBoardMonitorNode) is placed under the session's output root;
  an absolute path outside that root is refused.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from cuvis_cluster.engine.bounds import check_path, client_path
from cuvis_cluster.errors import InvalidArgument

from .base import ALL_STAGES, ANY_DTYPE, TORCH_DTYPES, Node, Port, Stage

_DTYPE_NAMES = {v: k for k, v in TORCH_DTYPES.items()}
_STAGE_BY_VALUE = {s.value: s for s in Stage}
# Every hparam named like a path (``output_video_path``, ``log_dir``, ``save_file``...) is a place an
# upstream node may write: it is resolved under the worker's output root, and one outside it is refused.
_PATH_LIKE = re.compile(r"(^|_)(dir|path|file|filename)$")


def port_from_spec(spec: Any, name: str = "") -> Port:
    """Our :class:`Port` for an upstream ``PortSpec``.

    Upstream's ``metrics`` ports carry ``list[Metric]``; ours carry a dict of 0-d tensors (kind
    "metrics"). Such a port becomes a metrics port, and :meth:`HostedNode.forward` converts the values.
    """
    variadic = bool(getattr(spec, "variadic", False))
    if name == "metrics" and getattr(spec, "dtype", None) is list:
        return Port(
            ANY_DTYPE,
            (),
            optional=bool(getattr(spec, "optional", False)),
            description=str(getattr(spec, "description", "") or ""),
            kind="metrics",
            variadic=variadic,
        )
    dtype = _DTYPE_NAMES.get(getattr(spec, "dtype", None), ANY_DTYPE)  # type: ignore[arg-type]
    raw_shape = tuple(getattr(spec, "shape", ()) or ())
    shape: tuple[int | str, ...] = tuple(d if isinstance(d, int | str) else -1 for d in raw_shape)
    optional = bool(getattr(spec, "optional", False))
    description = str(getattr(spec, "description", "") or "")
    return Port(dtype, shape, optional=optional, description=description, variadic=variadic)


def stages_of(upstream_cls: type) -> frozenset[Stage]:
    declared = getattr(upstream_cls, "EXECUTION_STAGES", None) or ()
    values = {str(getattr(s, "value", s)) for s in declared}
    if not values or "always" in values:
        return ALL_STAGES
    return frozenset(_STAGE_BY_VALUE[v] for v in values if v in _STAGE_BY_VALUE) or ALL_STAGES


def _overrides(upstream_cls: type, method: str) -> bool:
    from cuvis_ai_core.node import Node as UpstreamNode

    return getattr(upstream_cls, method, None) is not getattr(UpstreamNode, method, None)


class HostedNode(Node):
    """Base of the generated adapter classes; see the module docstring."""

    UPSTREAM: ClassVar[type]
    OUTPUT_ROOT: ClassVar[Path | None] = None

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        kwargs = dict(params)
        for key in [k for k in kwargs if _PATH_LIKE.search(k)]:
            if isinstance(kwargs[key], str | Path):
                kwargs[key] = str(self._confine(key, str(kwargs[key])))
        if "output_dir" not in kwargs and "output_dir" in _init_params(self.UPSTREAM):
            kwargs["output_dir"] = str(self._confine("output_dir", "runs"))
        self.upstream: nn.Module = self.UPSTREAM(**kwargs)
        self.stage: Stage | None = None  # set by the graph before a call when it knows the stage

    def set_stage(self, stage: Stage | None) -> None:
        """The stage the next forward runs in (handed to upstream as ``context.stage``)."""
        self.stage = stage

    def _confine(self, key: str, value: str) -> Path:
        check_path(value, f"{self.type_name}: hparam {key}")
        with client_path(f"{self.type_name}: hparam {key}", value):
            return self._confine_checked(key, value)

    def _confine_checked(self, key: str, value: str) -> Path:
        root = self.OUTPUT_ROOT
        path = Path(value).expanduser()
        if root is None:
            if not path.is_absolute():
                raise InvalidArgument(
                    f"{self.type_name}: hparam {key}={value!r} is relative and the worker has no output root",
                    field=key,
                )
            return path
        root = root.resolve()
        full = (path if path.is_absolute() else root / path).resolve()
        if full != root and root not in full.parents:
            raise InvalidArgument(
                f"{self.type_name}: hparam {key}={value!r} lies outside the output root", field=key
            )
        return full

    # -- graph ----------------------------------------------------------------------------------
    def forward(self, **inputs: Any) -> dict[str, Any]:
        # The instance decides, as upstream's executor asks it: some classes fit only with some hparams.
        if self.has_statistical_init() and bool(getattr(self.upstream, "requires_initial_fit", True)):
            self.require_fitted()
        from cuvis_ai_schemas.enums import ExecutionStage
        from cuvis_ai_schemas.execution.context import Context

        if self.stage is not None:
            stage = ExecutionStage(self.stage.value)
        else:
            stage = ExecutionStage.TRAIN if self.training else ExecutionStage.INFERENCE
        present = {k: v for k, v in inputs.items() if v is not None}
        for port, spec in self.INPUTS.items():
            value = present.get(port)
            if spec.kind == "metrics" and isinstance(value, Mapping):
                present[port] = _metric_list(value, stage)
            elif spec.kind == "metrics" and spec.variadic and isinstance(value, list):
                present[port] = [_metric_list(v, stage) if isinstance(v, Mapping) else v for v in value]
        result = dict(self.upstream(**present, context=Context(stage=stage)))
        for port, spec in self.OUTPUTS.items():
            if spec.kind == "metrics" and isinstance(result.get(port), list):
                result[port] = {m.name: torch.as_tensor(float(m.value)) for m in result[port]}
        return result

    def fit(self, batches: Iterable[Mapping[str, torch.Tensor]]) -> None:
        self.upstream.statistical_initialization(  # type: ignore[operator]
            {k: v for k, v in batch.items() if v is not None} for batch in batches
        )
        self.fitted = True

    def cleanup(self) -> None:
        """Release what the upstream node holds (TensorBoard writers); call when the pipeline is dropped."""
        release = getattr(self.upstream, "cleanup", None)
        if callable(release):
            release()

    # -- training --------------------------------------------------------------------------------
    def unfreeze(self) -> None:
        self.upstream.unfreeze()  # type: ignore[operator]

    def freeze(self) -> None:
        self.upstream.freeze()  # type: ignore[operator]

    # -- state: the upstream module's own keys ---------------------------------------------------
    def state_dict(
        self, *args: Any, destination: Any = None, prefix: str = "", keep_vars: bool = False
    ) -> Any:
        return self.upstream.state_dict(*args, destination=destination, prefix=prefix, keep_vars=keep_vars)

    def load_state_dict(
        self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False
    ) -> Any:
        result = self.upstream.load_state_dict(state_dict, strict=strict, assign=assign)
        if self.has_statistical_init() and state_dict:
            self.fitted = True
        return result


def _metric_list(values: Mapping[str, Any], stage: Any) -> list[Any]:
    """Our metrics dict (name -> 0-d tensor) as upstream's ``list[Metric]``."""
    from cuvis_ai_schemas.execution import Metric

    return [Metric(name=str(k), value=float(v), stage=stage) for k, v in values.items()]


def _init_params(cls: type) -> set[str]:
    names: set[str] = set()
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        try:
            names.update(inspect.signature(init).parameters)
        except (TypeError, ValueError):  # pragma: no cover - builtins
            continue
    return names


def hosted_class(upstream_cls: type, class_name: str, output_root: Path | None) -> type[HostedNode]:
    """A :class:`HostedNode` subclass serving ``upstream_cls`` under the full name ``class_name``."""
    namespace: dict[str, Any] = {
        "__module__": __name__,
        "__qualname__": f"Hosted[{class_name}]",
        "UPSTREAM": upstream_cls,
        "UPSTREAM_CLASSES": (class_name,),
        "OUTPUT_ROOT": output_root,
        "INPUTS": {
            k: port_from_spec(v, k) for k, v in dict(getattr(upstream_cls, "INPUT_SPECS", {})).items()
        },
        "OUTPUTS": {
            k: port_from_spec(v, k) for k, v in dict(getattr(upstream_cls, "OUTPUT_SPECS", {})).items()
        },
        "STAGES": stages_of(upstream_cls),
        "TRAINABLE_BUFFERS": tuple(getattr(upstream_cls, "TRAINABLE_BUFFERS", ()) or ()),
        "DESCRIPTION": (inspect.getdoc(upstream_cls) or "").split("\n\n", 1)[0],
        "type_name": upstream_cls.__name__,
        "class_name": class_name,
    }
    try:
        namespace["CATEGORY"] = str(upstream_cls.get_category().value)  # type: ignore[attr-defined]
        namespace["TAGS"] = tuple(sorted(str(t.value) for t in upstream_cls.get_tags()))  # type: ignore[attr-defined]
    except (AttributeError, TypeError, ValueError):
        pass
    if not _overrides(upstream_cls, "statistical_initialization"):
        # No statistical initialisation upstream: inherit Node.fit so has_statistical_init() is False.
        namespace["fit"] = Node.fit
    return type(upstream_cls.__name__, (HostedNode,), namespace)
