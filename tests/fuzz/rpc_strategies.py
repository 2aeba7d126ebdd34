"""Hypothesis strategies for every request of ``cuvis_ai.v1.CuvisAIService``, built from the descriptors.

:func:`request_strategy` walks a request's descriptor field by field, so a new RPC, field or message is
fuzzed without a change here. Each field gets a strategy from what it is (scalar type, enum, message,
repeated, map) and, where the name says what the server does with it, the hostile values for that use:

* ``session_id``: the real trained session, a fresh unknown id, junk;
* paths (``*_path``, ``search_paths``, ``path``, ``plugin_name``...): over-long names and components,
  traversal (``../``, absolute paths outside the roots, links out of the roots and a link loop), ``~user``,
  NUL, plus the bundled names so some calls get further;
* config documents (``config_bytes``, ``config_content``): a real pipeline config mutated, nesting past the
  limit, a YAML alias bomb, a document just over the size limit, 5000-digit numbers, bad timestamps,
  random bytes;
* tensors: consistent (raw_data matches dtype and shape, so the call reaches the pipeline) or not;
* enums: any 32-bit value, most of them undefined.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from hypothesis import strategies as st

from cuvis_cluster.wire.pb import pb

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
MAX_NESTING = 3  # message fields nested deeper than this stay unset
INT32 = st.one_of(st.sampled_from([0, 1, 2, 3, -1, 2**31 - 1, -(2**31)]), st.integers(-(2**31), 2**31 - 1))
INT64 = st.one_of(st.sampled_from([0, 1, -1, 2**63 - 1, -(2**63)]), st.integers(-(2**63), 2**63 - 1))
UINT32 = st.one_of(st.sampled_from([0, 1, 2**32 - 1]), st.integers(0, 2**32 - 1))
UINT64 = st.one_of(st.sampled_from([0, 1, 2**64 - 1]), st.integers(0, 2**64 - 1))
DOUBLE = st.floats(allow_nan=True, allow_infinity=True)
FLOAT = st.floats(width=32, allow_nan=True, allow_infinity=True)


# ---------------------------------------------------------------------------------------------------------
# strings a server might treat as paths
# ---------------------------------------------------------------------------------------------------------
def _fixed_paths(outside: Path) -> list[str]:
    return [
        "a" * 255,
        "a" * 256,
        "a" * 4096,
        "a" * 5000,
        "a/" * 2500,
        ("b" * 250 + "/") * 17,
        "../" * 3 + "outside/secret.yaml",
        "../outside/secret",
        "../../../../../../../../etc/passwd",
        str(outside / "secret.yaml"),
        str(outside / "new.yaml"),
        str(outside / "secret.pt"),
        str(outside.parent / "outputs" / ".." / "outside" / "x.yaml"),
        "/etc/passwd",
        "/proc/self/environ",
        "escape/secret.yaml",
        "escape/new.yaml",
        "dangling.yaml",
        "dangling",
        "loop/x.yaml",
        "loop",
        "~",
        "~/x.yaml",
        "~nobody-here/x.yaml",
        "~root/.ssh/id_rsa",
        "a\x00b.yaml",
        "\x00",
        "",
        " ",
        ".",
        "..",
        "/",
        "//",
        "x.yaml/",
        "rx_statistical",
        "pipeline/rx_statistical.yaml",
        "trainrun/rx_statistical",
        "fuzz/p.yaml",
        "fuzz/p.pt",
        "p.txt",
        "\u00e9\u4e2d\U0001f600.yaml",
        "\u202e.yaml",
        "C:\\Windows\\x.yaml",
        "file:///etc/passwd",
    ]


def path_strategy(outside: Path) -> st.SearchStrategy[str]:
    """Paths that must never reach the file system outside the roots, nor crash the worker."""
    fixed = _fixed_paths(outside)
    component = st.one_of(
        st.sampled_from(["..", ".", "a", "escape", "loop", "pipeline", "trainrun", "outputs", "data"]),
        st.text(st.characters(exclude_characters="/", exclude_categories=["Cs"]), max_size=12),
        st.integers(250, 300).map(lambda n: "c" * n),
    )
    built = st.lists(component, min_size=1, max_size=6).map("/".join)
    return st.one_of(st.sampled_from(fixed), built, built.map(lambda p: "/" + p), st.text(max_size=40))


# ---------------------------------------------------------------------------------------------------------
# config documents
# ---------------------------------------------------------------------------------------------------------
def _bundled(name: str) -> dict[str, Any]:
    return yaml.safe_load((CONFIGS / name).read_text())


def _nested(depth: int, opener: str, closer: str, inner: str = "1") -> str:
    return opener * depth + inner + closer * depth


def _alias_bomb(levels: int = 9) -> str:
    lines = ['l0: &l0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, levels):
        refs = ",".join([f"*l{i - 1}"] * 9)
        lines.append(f"l{i}: &l{i} [{refs}]")
    return "\n".join(lines) + "\n"


def _hostile_documents() -> list[bytes]:
    from cuvis_cluster.engine import bounds  # the limits under test, so the cases sit right at them

    deep_ok = bounds.MAX_DEPTH - 1
    return [
        _nested(100_000, "[", "]").encode(),
        _nested(5000, '{"a":', "}").encode(),
        _nested(bounds.MAX_DEPTH + 1, '{"a":', "}").encode(),
        _nested(deep_ok, '{"a":', "}").encode(),
        ("a: " + _nested(5000, "[", "]")).encode(),
        ("a:\n" + "".join("  " * i + "b:\n" for i in range(1, 1500))).encode(),
        _alias_bomb().encode(),
        b'{"a": "' + b"x" * bounds.MAX_DOCUMENT_BYTES + b'"}',
        b'{"n": ' + b"9" * 5000 + b"}",
        b"n: " + b"9" * 5000,
        b"when: 2001-13-45",
        b"when: 99999-01-01",
        b"b: !!binary '%%%'",
        b"!!python/object/apply:os.system ['touch /tmp/pwned']",
        b"? [a, b]\n: c",
        b"{1: 2, null: 3}",
        b"[1, 2, 3]",
        b'"just a string"',
        b"null",
        b"",
        b"   ",
        b"\xff\xfe\x00",
        b"nodes: ${oc.env:HOME}",
        b"nodes: [{name: x, class_name: os.system}]",
        b'{"nodes": [{"name": "n", "class_name": "builtins.eval", "params": {"x": "1"}}]}',
    ]


def _mutated(config: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    """A real config with one key replaced by junk, so validation runs on something nearly right."""
    junk = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.floats(allow_nan=False),
        st.text(max_size=20),
        st.lists(st.integers(), max_size=3),
        st.dictionaries(st.text(max_size=5), st.integers(), max_size=3),
    )

    def replace(key: str, value: Any) -> dict[str, Any]:
        out = json.loads(json.dumps(config))
        out[key] = value
        return out

    return st.builds(replace, st.sampled_from(sorted(config)), junk) if config else st.just(config)


def document_strategy() -> st.SearchStrategy[bytes]:
    real = [_bundled("pipeline/rx_statistical.yaml"), _bundled("pipeline/channel_selector.yaml")]
    real.append({"pipeline": real[0], "name": "fuzz", "data": _bundled("data/lentils_synthetic.yaml")})
    as_json = st.one_of(*(_mutated(c) for c in real)).map(lambda d: json.dumps(d, default=str).encode())
    as_yaml = st.one_of(*(_mutated(c) for c in real)).map(lambda d: yaml.safe_dump(d).encode())
    hostile = st.sampled_from(_hostile_documents())
    return st.one_of(
        hostile,
        hostile,
        hostile,
        as_json,
        as_yaml,
        st.sampled_from([json.dumps(c).encode() for c in real]),
        st.binary(max_size=64),
        st.text(max_size=64).map(str.encode),
    )


# ---------------------------------------------------------------------------------------------------------
# tensors
# ---------------------------------------------------------------------------------------------------------
@st.composite
def consistent_tensor(draw: st.DrawFn) -> pb.Tensor:
    """A tensor whose payload matches its dtype and shape: the call gets past decoding into the engine."""
    dtype = draw(st.sampled_from([pb.D_TYPE_FLOAT32, pb.D_TYPE_UINT16, pb.D_TYPE_UINT8, pb.D_TYPE_INT64]))
    itemsize = {pb.D_TYPE_FLOAT32: 4, pb.D_TYPE_UINT16: 2, pb.D_TYPE_UINT8: 1, pb.D_TYPE_INT64: 8}[dtype]
    shape = draw(st.lists(st.integers(0, 9), min_size=0, max_size=5))
    if draw(st.booleans()):
        shape = [1, draw(st.integers(1, 8)), draw(st.integers(1, 8)), draw(st.sampled_from([1, 3, 61, 62]))]
    count = int(np.prod(shape)) if shape else 1
    raw = draw(st.binary(min_size=count * itemsize, max_size=count * itemsize))
    return pb.Tensor(shape=shape, dtype=dtype, raw_data=raw)


# ---------------------------------------------------------------------------------------------------------
# the descriptor walk
# ---------------------------------------------------------------------------------------------------------
_PATH_NAMES = ("path", "search_paths", "plugin_name", "filter_tag", "output_specs", "name", "format")


class RequestStrategies:
    """Strategies for request messages; ``session_ids`` gives the values tried for ``session_id``."""

    def __init__(self, outside: Path, session_ids: st.SearchStrategy[str]) -> None:
        self.paths = path_strategy(outside)
        self.documents = document_strategy()
        # Half the requests name the real session, so they get past the session lookup to the engine.
        self.session_ids = st.one_of(
            session_ids,
            session_ids,
            session_ids,
            st.builds(lambda: str(uuid.uuid4())),
            st.sampled_from(["", "../x", "a" * 5000, "\x00", "00000000-0000-4000-8000-000000000000"]),
            st.text(max_size=40),
        )

    def request(self, descriptor: Descriptor) -> st.SearchStrategy[Any]:
        return self._message(descriptor, 0)

    def _message(self, descriptor: Descriptor, depth: int) -> st.SearchStrategy[Any]:
        cls = _message_class(descriptor)
        if descriptor.full_name == "cuvis_ai.v1.Tensor":
            return st.one_of(consistent_tensor(), self._fields(descriptor, cls, depth))
        return self._fields(descriptor, cls, depth)

    def _fields(self, descriptor: Descriptor, cls: Callable[..., Any], depth: int) -> st.SearchStrategy[Any]:
        nested = FieldDescriptor.TYPE_MESSAGE
        fields = [f for f in descriptor.fields if depth < MAX_NESTING or f.type != nested]
        if not fields:
            return st.builds(cls)
        per_field = {f.name: st.one_of(st.none(), self._field(f, depth)) for f in fields}

        def build(values: dict[str, Any]) -> Any:
            message = cls()
            for f in fields:
                value = values[f.name]
                if value is not None:
                    _assign(message, f, value)
            return message

        return st.fixed_dictionaries(per_field).map(build)

    def _field(self, f: FieldDescriptor, depth: int) -> st.SearchStrategy[Any]:
        if _is_map(f):
            entry = f.message_type.fields_by_name
            keys, values = self._single(entry["key"], depth + 1), self._single(entry["value"], depth + 1)
            return st.dictionaries(keys, values, max_size=3)
        if f.is_repeated:
            return st.lists(self._single(f, depth + 1), max_size=4)
        return self._single(f, depth + 1)

    def _single(self, f: FieldDescriptor, depth: int) -> st.SearchStrategy[Any]:
        if f.type == FieldDescriptor.TYPE_MESSAGE:
            return self._message(f.message_type, depth)
        if f.type == FieldDescriptor.TYPE_ENUM:
            defined = [v.number for v in f.enum_type.values]
            return st.one_of(st.sampled_from(defined), INT32)
        if f.type == FieldDescriptor.TYPE_STRING:
            return self._string(f)
        if f.type == FieldDescriptor.TYPE_BYTES:
            if f.name in ("config_bytes", "weights_bytes"):
                return self.documents if f.name == "config_bytes" else st.binary(max_size=256)
            return st.binary(max_size=64)
        if f.type == FieldDescriptor.TYPE_BOOL:
            return st.booleans()
        if f.type in (FieldDescriptor.TYPE_DOUBLE,):
            return DOUBLE
        if f.type == FieldDescriptor.TYPE_FLOAT:
            return FLOAT
        if f.type in (FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_SINT64, FieldDescriptor.TYPE_SFIXED64):
            return INT64
        if f.type in (FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_FIXED64):
            return UINT64
        if f.type in (FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_FIXED32):
            return UINT32
        return INT32

    def _string(self, f: FieldDescriptor) -> st.SearchStrategy[str]:
        if f.name == "session_id":
            return self.session_ids
        if f.name == "config_type":
            return st.one_of(
                st.sampled_from(["pipeline", "trainrun", "data", "training", "PIPELINE", ""]),
                st.text(max_size=12),
            )
        if f.name == "overrides":
            return st.one_of(
                st.sampled_from(
                    [
                        "nodes.rx_detector.params.eps=1e-3",
                        "nodes.nope.params.x=1",
                        "metadata.name=${oc.env:HOME}",
                        "data=../../outside/secret",
                        "hydra.run.dir=/tmp/x",
                        "+hydra/launcher=basic",
                        "~nodes",
                        "a" * 5000 + "=1",
                        "x=" + "[" * 2000,
                        "=",
                        "",
                    ]
                ),
                st.text(max_size=30),
            )
        if f.name == "config_content":
            return self.documents.map(lambda b: b.decode("utf-8", "replace"))
        if any(part in f.name for part in _PATH_NAMES):
            return self.paths
        return st.one_of(st.text(max_size=30), self.paths)


def _is_map(f: FieldDescriptor) -> bool:
    return f.type == FieldDescriptor.TYPE_MESSAGE and f.message_type.GetOptions().map_entry


def _message_class(descriptor: Descriptor) -> Callable[..., Any]:
    from google.protobuf import message_factory

    return message_factory.GetMessageClass(descriptor)


def _assign(message: Any, f: FieldDescriptor, value: Any) -> None:
    if _is_map(f):
        target = getattr(message, f.name)
        for key, item in value.items():
            if f.message_type.fields_by_name["value"].type == FieldDescriptor.TYPE_MESSAGE:
                target[key].CopyFrom(item)
            else:
                target[key] = item
    elif f.is_repeated:
        target = getattr(message, f.name)
        if f.type == FieldDescriptor.TYPE_MESSAGE:
            for item in value:
                target.add().CopyFrom(item)
        else:
            target.extend(value)
    elif f.type == FieldDescriptor.TYPE_MESSAGE:
        getattr(message, f.name).CopyFrom(value)
    else:
        setattr(message, f.name, value)


# ---------------------------------------------------------------------------------------------------------
# the fixed corpus: every hostile value in every text field, on an otherwise plausible request
# ---------------------------------------------------------------------------------------------------------
def plausible(descriptor: Descriptor, session: str) -> Any:
    """A request that gets past the first checks: the real session, a known config type, a defined enum."""
    message = _message_class(descriptor)()
    for f in descriptor.fields:
        if f.is_repeated:
            continue
        if f.name == "session_id":
            message.session_id = session
        elif f.name == "config_type":
            message.config_type = "pipeline"
        elif f.type == FieldDescriptor.TYPE_ENUM:
            defined = [v.number for v in f.enum_type.values if v.number]
            setattr(message, f.name, defined[0] if defined else 0)
    return message


def _text_fields(descriptor: Descriptor, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Paths (field names) of every string and bytes field, into nested messages one level deep."""
    found: list[tuple[str, ...]] = []
    for f in descriptor.fields:
        if f.type in (FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_BYTES) and not _is_map(f):
            found.append((*prefix, f.name))
        elif f.type == FieldDescriptor.TYPE_MESSAGE and not f.is_repeated and not prefix:
            found += _text_fields(f.message_type, (f.name,))
    return found


def corpus(descriptor: Descriptor, session: str, outside: Path) -> list[tuple[str, Any]]:
    """(label, request) for every hostile path in every string field and every hostile document in every
    bytes field (also as text, for ``config_content``) of ``descriptor``."""
    paths = _fixed_paths(outside)
    documents = _hostile_documents()
    out: list[tuple[str, Any]] = []
    for field_path in _text_fields(descriptor):
        *outer, name = field_path
        for value in _corpus_values(descriptor, field_path, paths, documents):
            request = plausible(descriptor, session)
            holder = request
            for part in outer:
                holder = getattr(holder, part)
            target = holder.DESCRIPTOR.fields_by_name[name]
            if target.is_repeated:
                getattr(holder, name).append(value)
            else:
                setattr(holder, name, value)
            if outer:
                getattr(request, outer[0]).SetInParent()
            out.append((f"{'.'.join(field_path)}={value[:60]!r}", request))
    return out


def _corpus_values(
    descriptor: Descriptor, field_path: tuple[str, ...], paths: list[str], documents: list[bytes]
) -> list[Any]:
    holder = descriptor
    for part in field_path[:-1]:
        holder = holder.fields_by_name[part].message_type
    f = holder.fields_by_name[field_path[-1]]
    if f.type == FieldDescriptor.TYPE_BYTES:
        return documents if f.name == "config_bytes" else [b"", b"\x00" * 8, b"PK\x03\x04junk", b"\xff" * 64]
    if f.name == "config_content":
        return [d.decode("utf-8", "replace") for d in documents]
    return paths
