"""The pipeline graph: nodes wired port to port, validated, ordered and run stage by stage.

A pipeline is built from a :class:`~cuvis_cluster.engine.schemas.PipelineConfig` (or its dict form) and a
:class:`~cuvis_cluster.engine.nodes.base.NodeRegistry`. Building validates everything a user can get wrong
and names the node and port in the InvalidArgument: unknown node types and ports, dtype/rank/size
mismatches, cycles, and required inputs that are neither connected nor fed by a batch key.

At run time a batch key (``cube``, ``wavelengths``, ``mask``...) feeds every *unconnected* input port of the
same name; connected ports take the output of their source node. ``forward`` returns the outputs of every
executed node keyed ``"node.port"``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

from cuvis_cluster.engine import canonical, schemas
from cuvis_cluster.engine.graph_order import topological_order
from cuvis_cluster.engine.nodes.base import ANY_DTYPE, TORCH_DTYPES, Node, NodeRegistry, Port, Stage
from cuvis_cluster.engine.types import TensorSpecInfo
from cuvis_cluster.engine.weights import load_node_states
from cuvis_cluster.errors import CuvisError, InvalidArgument, ResourceExhausted

# Keys a batch (from a data module or an Inference request) may carry; they feed unconnected ports.
BATCH_KEYS = (
    "cube",
    "wavelengths",
    "mask",
    "rgb_image",
    "frame_id",
    "mesu_index",
    "bboxes",
    "points",
    "text_prompt",
)
_DTYPE_NAMES = {v: k for k, v in TORCH_DTYPES.items()}


def dtype_name(dtype: torch.dtype) -> str:
    return _DTYPE_NAMES.get(dtype, str(dtype).removeprefix("torch."))


def _plain(value: Any) -> Any:
    """A YAML/JSON-safe copy (tuples -> lists, tensors -> lists)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, torch.Tensor):
        return value.tolist()
    return value


def _label(node: Node) -> str:
    return f"node {node.name!r} ({node.type_name})"


_MEMORY_HINTS = ("out of memory", "allocat", "not enough memory", "cannot allocate", "memory")


def is_memory_error(exc: BaseException) -> bool:
    """Whether ``exc`` is an allocation failure (host or device) rather than a programming error."""
    if isinstance(exc, MemoryError | torch.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and any(h in str(exc).lower() for h in _MEMORY_HINTS)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class Pipeline(nn.Module):
    """A validated DAG of nodes (see the module docstring)."""

    def __init__(
        self,
        nodes: Mapping[str, Node],
        connections: Iterable[tuple[str, str, str, str]],
        metadata: Mapping[str, Any] | None = None,
        *,
        extra_inputs: Iterable[str] = (),
        plugins: Iterable[str] = (),
    ) -> None:
        super().__init__()
        self.nodes = nn.ModuleDict(dict(nodes))
        self.metadata: dict[str, Any] = dict(metadata or {})
        self.plugins: list[str] = list(plugins)
        self.connections: list[tuple[str, str, str, str]] = list(connections)
        self.extra_inputs = tuple(extra_inputs)
        # Profiling hook (issue 5): an object with ``enabled`` and ``measure(node_name, stage)`` (a context
        # manager); each node call is wrapped in it while ``enabled`` is true.
        self.profiler: Any = None
        self._device = torch.device("cpu")
        self._incoming: dict[tuple[str, str], tuple[str, str]] = {}  # the (first) source of an input
        self._fan_in: dict[tuple[str, str], list[tuple[str, str]]] = {}  # every source of a variadic input
        self._validate()
        self.order: list[str] = self._topological_order()

    # -- construction ----------------------------------------------------------------------------
    @classmethod
    def from_config(
        cls,
        config: Mapping[str, Any] | schemas.PipelineConfig,
        registry: NodeRegistry,
        *,
        extra_inputs: Iterable[str] = (),
    ) -> Pipeline:
        model = (
            config
            if isinstance(config, schemas.PipelineConfig)
            else schemas.validate("pipeline", dict(config) if isinstance(config, Mapping) else config)
        )
        assert isinstance(model, schemas.PipelineConfig)
        nodes: dict[str, Node] = {}
        for index, spec in enumerate(model.nodes):
            try:
                cls_ = registry.get(spec.type)
            except InvalidArgument as exc:
                raise InvalidArgument(
                    f"node {spec.name!r}: {exc.message}", field=f"nodes.{index}.type"
                ) from None
            try:
                node = cls_(**dict(spec.params))
            except CuvisError as exc:
                raise type(exc)(
                    f"node {spec.name!r} ({cls_.type_name}): {exc.message}", field=spec.name
                ) from None
            except (TypeError, ValueError) as exc:
                raise InvalidArgument(
                    f"node {spec.name!r} ({cls_.type_name}): bad params: {exc}", field=f"nodes.{index}.params"
                ) from None
            except (RuntimeError, MemoryError) as exc:
                if is_memory_error(exc):
                    raise ResourceExhausted(
                        f"node {spec.name!r} ({cls_.type_name}): not enough memory to build it with these "
                        f"params ({_first_line(exc)}); use smaller sizes",
                        field=f"nodes.{index}.params",
                    ) from None
                raise InvalidArgument(
                    f"node {spec.name!r} ({cls_.type_name}): bad params: {_first_line(exc)}",
                    field=f"nodes.{index}.params",
                ) from None
            node.name = spec.name
            node.class_name = registry.canonical_name(spec.type, cls_)  # the name written back on save
            nodes[spec.name] = node
        connections = [
            (c.source_node, c.source_port, c.target_node, c.target_port) for c in model.connections
        ]
        metadata = model.metadata.model_dump(mode="json")
        return cls(nodes, connections, metadata, extra_inputs=extra_inputs, plugins=model.plugins)

    def to_config(self) -> dict[str, Any]:
        """The canonical config (validates under ``cuvis_ai_schemas.pipeline.PipelineConfig``)."""
        return canonical.pipeline(
            {
                "metadata": _plain(self.metadata),
                "plugins": list(self.plugins),
                "nodes": [
                    {
                        "name": name,
                        "class_name": getattr(node, "class_name", None)
                        or canonical.class_name_of(str(node.type_name)),
                        "hparams": _plain(node.params),
                    }
                    for name, node in self.nodes.items()
                ],
                "connections": [
                    {"source": f"{a}.outputs.{p}", "target": f"{b}.inputs.{q}"}
                    for a, p, b, q in self.connections
                ],
            }
        )

    def _node(self, name: str) -> Node:
        node = self.nodes[name]
        assert isinstance(node, Node)
        return node

    def _ports(self, where: str, node_name: str, port: str, kind: str) -> dict[str, Port]:
        """The ``kind`` ("output" or "input") ports of a node, which must include ``port``."""
        node = self._node(node_name)
        ports = node.output_ports() if kind == "output" else node.input_ports()
        if port not in ports:
            raise InvalidArgument(
                f"{where}: {_label(node)} has no {kind} port {port!r}; "
                f"{kind}s: {', '.join(ports) or '(none)'}",
                field=f"{node_name}.{port}",
            )
        return ports

    def _validate(self) -> None:
        names = list(self.nodes.keys())
        for index, (src, sport, dst, dport) in enumerate(self.connections):
            where = f"connection {src}.{sport} -> {dst}.{dport}"
            for node_name, side in ((src, "source"), (dst, "target")):
                if node_name not in self.nodes:
                    raise InvalidArgument(
                        f"{where}: unknown node {node_name!r} in the {side}; nodes: {', '.join(names)}",
                        field=f"connections.{index}.{side}",
                    )
            outputs = self._ports(where, src, sport, "output")
            inputs = self._ports(where, dst, dport, "input")
            problem = outputs[sport].compatible_with(inputs[dport])
            if problem is not None:
                raise InvalidArgument(
                    f"{where}: output {src}.{sport} {_spec(outputs[sport])} cannot feed input {dst}.{dport} "
                    f"{_spec(inputs[dport])}: {problem}",
                    field=f"{dst}.{dport}",
                )
            if inputs[dport].variadic:
                self._fan_in.setdefault((dst, dport), []).append((src, sport))
            elif (dst, dport) in self._incoming:
                first = self._incoming[(dst, dport)]
                raise InvalidArgument(
                    f"{where}: input {dst}.{dport} is already fed by {first[0]}.{first[1]}",
                    field=f"{dst}.{dport}",
                )
            self._incoming.setdefault((dst, dport), (src, sport))
        feedable = set(BATCH_KEYS) | set(self.extra_inputs)
        for name in names:
            node = self._node(name)
            for port, spec in node.input_ports().items():
                if spec.optional or (name, port) in self._incoming or port in feedable:
                    continue
                if getattr(node, "UPSTREAM", None) is not None:  # hosted: upstream reads it from the batch
                    self.extra_inputs = (*self.extra_inputs, port)
                    continue
                raise InvalidArgument(
                    f"{_label(node)}: required input {port!r} is not connected and no batch key feeds it "
                    f"(batch keys: {', '.join(sorted(feedable))})",
                    field=f"{name}.{port}",
                )

    def _topological_order(self) -> list[str]:
        return topological_order(list(self.nodes.keys()), self.connections)

    # -- structure queries -----------------------------------------------------------------------
    def node(self, name: str) -> Node:
        if name not in self.nodes:
            raise InvalidArgument(f"unknown node {name!r}; nodes: {', '.join(self.nodes)}", field=name)
        return self._node(name)

    def ancestors(self, name: str) -> set[str]:
        parents: dict[str, set[str]] = {n: set() for n in self.nodes}
        for src, _, dst, _ in self.connections:
            parents[dst].add(src)
        out: set[str] = set()
        todo = deque(parents.get(name, ()))
        while todo:
            n = todo.popleft()
            if n not in out:
                out.add(n)
                todo.extend(parents[n])
        return out

    def incoming(self, name: str, port: str) -> tuple[str, str] | None:
        return self._incoming.get((name, port))

    def statistical_nodes(self) -> list[str]:
        return [n for n in self.order if self._node(n).has_statistical_init()]

    def resolve_names(self, names: Iterable[str], what: str = "nodes") -> list[str]:
        """Node names from a list of node names or node type names (upstream lists types)."""
        out: list[str] = []
        unknown: list[str] = []
        for item in names:
            if item in self.nodes:
                out.append(item)
                continue
            by_type = [n for n in self.order if self._node(n).type_name == item.rsplit(".", 1)[-1]]
            if by_type:
                out.extend(by_type)
            else:
                unknown.append(item)
        if unknown:
            raise InvalidArgument(
                f"{what}: unknown node(s) {', '.join(map(repr, unknown))}; nodes: {', '.join(self.nodes)}",
                field=what,
            )
        return list(dict.fromkeys(out))

    def loss_nodes(self, names: Iterable[str]) -> list[str]:
        return self.resolve_names(names, "loss_nodes")

    def unfreeze(self, names: Iterable[str]) -> list[str]:
        resolved = self.resolve_names(names, "unfreeze_nodes")
        for n in resolved:
            self._node(n).unfreeze()
        return resolved

    def freeze(self, names: Iterable[str]) -> list[str]:
        resolved = self.resolve_names(names, "freeze_nodes")
        for n in resolved:
            self._node(n).freeze()
        return resolved

    # -- specs -----------------------------------------------------------------------------------
    def input_specs(self) -> list[TensorSpecInfo]:
        """Unconnected input ports of the nodes that run in INFERENCE, merged by port name.

        These are the batch keys an Inference caller can send; ``required`` when any node that consumes the
        key in INFERENCE needs it: a port that is not optional, or an optional port that passes the key
        through (an output of the same name) to a required port further down (``HyperspectralInput``'s
        ``wavelengths`` feeding ``BandpassByWavelength``).
        """
        specs: dict[str, TensorSpecInfo] = {}
        for name in self.order:
            node = self._node(name)
            if Stage.INFERENCE not in node.STAGES:
                continue
            for port, spec in node.input_ports().items():
                if (name, port) in self._incoming or not spec.from_batch:  # _incoming has fan-in ports too
                    continue
                required = not spec.optional or self._needed_downstream(name, port)
                if port in specs:
                    if required and not specs[port].required:
                        specs[port].required = True
                    continue
                specs[port] = TensorSpecInfo(port, spec.wire_shape, spec.wire_dtype, required)
        return list(specs.values())

    def _needed_downstream(self, name: str, port: str) -> bool:
        """Whether the value entering ``name.port`` leaves as output ``name.port`` and reaches (through
        such pass-throughs) a required input of a node that runs in INFERENCE."""
        seen: set[tuple[str, str]] = set()
        todo = deque([(name, port)])
        while todo:
            node_name, key = todo.popleft()
            if (node_name, key) in seen:
                continue
            seen.add((node_name, key))
            if key not in self._node(node_name).output_ports():
                continue
            for src, sport, dst, dport in self.connections:
                if src != node_name or sport != key:
                    continue
                target = self._node(dst)
                if Stage.INFERENCE not in target.STAGES:
                    continue
                if not target.input_ports()[dport].optional:
                    return True
                todo.append((dst, dport))
        return False

    def output_specs(self) -> list[TensorSpecInfo]:
        """Every output of the nodes that run in INFERENCE, named ``node.port``."""
        out = []
        for name in self.order:
            node = self._node(name)
            if Stage.INFERENCE not in node.STAGES:
                continue
            for port, spec in node.output_ports().items():
                out.append(TensorSpecInfo(f"{name}.{port}", spec.wire_shape, spec.wire_dtype, False))
        return out

    def input_ports_for(self, key: str) -> list[tuple[str, Port]]:
        """(node name, port spec) of every unconnected input port fed by batch key ``key``."""
        out = []
        for name in self.order:
            spec = self._node(name).input_ports().get(key)
            if spec is not None and spec.from_batch and (name, key) not in self._incoming:
                out.append((name, spec))
        return out

    def fixed_sizes(self, key: str, rank: int) -> dict[int, tuple[int, str]]:
        """Sizes that the graph fixes for dimensions of batch input ``key``.

        Follows symbolic dimensions (a node whose input and output share the symbol ``"C"`` keeps that
        size) from the ports ``key`` feeds to the first port that fixes the size (e.g. RXGlobal's
        ``num_channels``). Returns ``{dim: (size, "node.port")}``.
        """
        found: dict[int, tuple[int, str]] = {}
        for name, spec in self.input_ports_for(key):
            if len(spec.shape) != rank:
                continue
            for dim, size in enumerate(spec.shape):
                if dim in found:
                    continue
                if isinstance(size, int):
                    if size > 0:
                        found[dim] = (size, f"{name}.{key}")
                    continue
                hit = self._follow_symbol(name, size)
                if hit is not None:
                    found[dim] = hit
        return found

    def _follow_symbol(self, start: str, symbol: str) -> tuple[int, str] | None:
        seen: set[tuple[str, str]] = set()
        todo = deque([(start, symbol)])
        while todo:
            name, sym = todo.popleft()
            if (name, sym) in seen:
                continue
            seen.add((name, sym))
            node = self._node(name)
            for sport, ospec in node.output_ports().items():
                for dim, size in enumerate(ospec.shape):
                    if size != sym:
                        continue
                    for src, p, dst, q in self.connections:
                        if src != name or p != sport:
                            continue
                        target = self._node(dst).input_ports()[q]
                        if dim >= len(target.shape):
                            continue
                        tsize = target.shape[dim]
                        if isinstance(tsize, int):
                            if tsize > 0:
                                return tsize, f"{dst}.{q}"
                        else:
                            todo.append((dst, tsize))
        return None

    # -- device ----------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self._device

    def to_device(self, device: torch.device | str) -> Pipeline:
        device = torch.device(device)
        try:
            self.to(device)
        except (RuntimeError, MemoryError) as exc:
            if not is_memory_error(exc):
                raise
            self.to("cpu")  # give back whatever part already moved
            raise ResourceExhausted(
                f"the pipeline does not fit in {device.type} memory ({_first_line(exc)})"
            ) from None
        self._device = device
        return self

    # -- execution -------------------------------------------------------------------------------
    def forward(
        self,
        batch: Mapping[str, Any],
        stage: Stage = Stage.INFERENCE,
        upto: str | None = None,
        *,
        inclusive: bool = True,
    ) -> dict[str, Any]:
        """Run the graph; see the module docstring.

        ``upto`` runs only that node's ancestors and, when ``inclusive``, the node itself.
        """
        if upto is not None:
            selected = self.ancestors(self.node(upto).name)
            if inclusive:
                selected.add(upto)
        else:
            selected = None
        feed = self._to_device(batch)
        outputs: dict[str, Any] = {}
        for name in self.order:
            if selected is not None and name not in selected:
                continue
            node = self._node(name)
            if stage not in node.STAGES:
                continue
            kwargs = self._gather(name, node, feed, outputs)
            if kwargs is None:
                continue
            result = self._call(name, node, kwargs, stage)
            for port, value in result.items():
                outputs[f"{name}.{port}"] = value
        return outputs

    def node_inputs(
        self, name: str, batch: Mapping[str, Any], stage: Stage = Stage.INFERENCE
    ) -> dict[str, Any] | None:
        """The inputs ``name`` gets for ``batch`` (its ancestors are run); None when a source did not run."""
        feed = self._to_device(batch)
        outputs = self.forward(feed, stage, upto=name, inclusive=False)
        return self._gather(name, self._node(name), feed, outputs)

    def _to_device(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        device = self._device
        return {
            k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) and v.device != device else v)
            for k, v in batch.items()
        }

    def _gather(
        self, name: str, node: Node, feed: Mapping[str, Any], outputs: Mapping[str, Any]
    ) -> dict[str, Any] | None:
        ran = {key.split(".", 1)[0] for key in outputs}
        kwargs: dict[str, Any] = {}
        for port, spec in node.input_ports().items():
            sources = self._fan_in.get((name, port))
            if sources:  # upstream's fan-in: the values of the sources that produced one, in order
                values = [outputs.get(f"{s}.{p}") for s, p in sources]
                if any(v is not None for v in values):
                    kwargs[port] = [v for v in values if v is not None]
                continue
            source = self._incoming.get((name, port))
            if source is not None:
                key = f"{source[0]}.{source[1]}"
                if key in outputs and outputs[key] is not None:
                    kwargs[port] = outputs[key]
                elif not spec.optional:
                    if source[0] not in ran:
                        return None  # its source did not run in this stage: skip this node too
                    raise self._absent_output(name, port, source, feed)
                continue
            value = feed.get(port) if spec.from_batch else None
            if value is not None:
                kwargs[port] = value
            elif not spec.optional:
                raise InvalidArgument(
                    f"inputs.{port}: missing required input (needed by {_label(node)})",
                    field=f"inputs.{port}",
                )
        return kwargs

    def _absent_output(
        self, name: str, port: str, source: tuple[str, str], feed: Mapping[str, Any]
    ) -> InvalidArgument:
        """A required input whose source ran but left its (optional) output out."""
        src_node = self._node(source[0])
        fed_by_batch = source[1] in src_node.input_ports() and (source[0], source[1]) not in self._incoming
        if fed_by_batch and feed.get(source[1]) is None:
            return InvalidArgument(
                f"inputs.{source[1]}: missing, but {_label(self._node(name))} needs {source[0]}.{source[1]} "
                f"for its input {port!r}; send inputs.{source[1]}",
                field=f"inputs.{source[1]}",
            )
        return InvalidArgument(
            f"{_label(self._node(name))}: required input {port!r} got nothing from {source[0]}.{source[1]}",
            field=f"{name}.{port}",
        )

    def _call(self, name: str, node: Node, kwargs: dict[str, Any], stage: Stage) -> Mapping[str, Any]:
        if callable(set_stage := getattr(node, "set_stage", None)):
            set_stage(stage)  # a hosted upstream node reads its stage, as under upstream's executor
        profiler = self.profiler
        if profiler is not None and getattr(profiler, "enabled", True):
            with profiler.measure(name, stage):
                result = node(**kwargs)
        else:
            result = node(**kwargs)
        if not isinstance(result, Mapping):
            raise TypeError(f"{_label(node)} returned {type(result).__name__}, expected a dict of outputs")
        return result

    # -- weights ---------------------------------------------------------------------------------
    def weights_payload(self) -> dict[str, Any]:
        state = {
            name: {k: v.detach().cpu().clone() for k, v in self._node(name).state_dict().items()}
            for name in self.nodes
        }
        return {"state_dict": state, "metadata": _plain(self.metadata)}

    def load_weights_payload(self, payload: Any, strict: bool = True) -> None:
        """Load a weights payload (see :mod:`cuvis_cluster.engine.weights`); its metadata is adopted when
        the pipeline has none."""
        load_node_states({name: self._node(name) for name in self.nodes}, payload, strict)
        if isinstance(payload.get("metadata"), Mapping) and not self.metadata:
            self.metadata = dict(payload["metadata"])


def _spec(port: Port) -> str:
    dims = ",".join(str(d) for d in port.shape)
    return f"[{port.dtype if port.dtype != ANY_DTYPE else 'any'} {dims}]"
