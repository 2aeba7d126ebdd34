"""Generate ``docs/api-reference.md`` from the comments in the ``.proto`` files.

Usage (from the repository root)::

    python -m cuvis_cluster.client.apidoc            # rewrite docs/api-reference.md
    python -m cuvis_cluster.client.apidoc --check    # exit 1 when the file is stale
    python -m cuvis_cluster.client.apidoc --out -    # print to stdout

The comments come from the ``FileDescriptorSet`` with source info that ``python -m
cuvis_cluster.wire.codegen`` stores next to the generated stubs, so the reference always describes the
contract the code was generated from (the codegen staleness test ties that set to ``proto/``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable
from pathlib import Path

from google.protobuf import descriptor_pb2

from cuvis_cluster.client._channel import IDEMPOTENT_METHODS, RETRY_EXCLUDED
from cuvis_cluster.wire.descriptors import file_descriptor_set

REPO_ROOT = Path(__file__).resolve().parents[3]
DEFAULT_OUT = REPO_ROOT / "docs" / "api-reference.md"

PUBLIC_FILE = "cuvis_ai/v1/cuvis_ai.proto"
INTERNAL_FILE = "cuvis_cluster/internal/v1/control.proto"

# FileDescriptorProto / DescriptorProto / EnumDescriptorProto / ServiceDescriptorProto field numbers,
# as used in SourceCodeInfo.Location.path.
_FILE_MESSAGE, _FILE_ENUM, _FILE_SERVICE, _FILE_SYNTAX = 4, 5, 6, 12
_MSG_FIELD, _MSG_NESTED, _MSG_ENUM, _MSG_ONEOF = 2, 3, 4, 8
_ENUM_VALUE = 2
_SERVICE_METHOD = 2

_FDP = descriptor_pb2.FieldDescriptorProto
_SCALARS = {
    _FDP.TYPE_DOUBLE: "double",
    _FDP.TYPE_FLOAT: "float",
    _FDP.TYPE_INT64: "int64",
    _FDP.TYPE_UINT64: "uint64",
    _FDP.TYPE_INT32: "int32",
    _FDP.TYPE_FIXED64: "fixed64",
    _FDP.TYPE_FIXED32: "fixed32",
    _FDP.TYPE_BOOL: "bool",
    _FDP.TYPE_STRING: "string",
    _FDP.TYPE_BYTES: "bytes",
    _FDP.TYPE_UINT32: "uint32",
    _FDP.TYPE_SFIXED32: "sfixed32",
    _FDP.TYPE_SFIXED64: "sfixed64",
    _FDP.TYPE_SINT32: "sint32",
    _FDP.TYPE_SINT64: "sint64",
}


class _Comments:
    """Comments of one file by descriptor path."""

    def __init__(self, proto: descriptor_pb2.FileDescriptorProto) -> None:
        self._by_path: dict[tuple[int, ...], descriptor_pb2.SourceCodeInfo.Location] = {
            tuple(loc.path): loc for loc in proto.source_code_info.location
        }

    def get(self, path: Iterable[int]) -> str:
        loc = self._by_path.get(tuple(path))
        if loc is None:
            return ""
        text = loc.leading_comments or loc.trailing_comments
        if not text and loc.leading_detached_comments:
            text = loc.leading_detached_comments[-1]
        return _dedent(text)


def _dedent(text: str) -> str:
    lines = [line[1:] if line.startswith(" ") else line for line in text.strip("\n").split("\n")]
    return "\n".join(lines).strip()


def _markdown(text: str) -> str:
    """A comment as Markdown: runs of indented lines (aligned tables in the comment) become code blocks."""
    out: list[str] = []
    block: list[str] = []
    for line in text.split("\n"):
        if line.startswith("  "):
            block.append(line)
            continue
        if block:
            out += ["", "```text", *block, "```", ""]
            block = []
        out.append(line)
    if block:
        out += ["", "```text", *block, "```"]
    return "\n".join(out).replace("\n\n\n", "\n\n").strip()


def _one_line(text: str) -> str:
    """A comment as a table cell: paragraphs joined, pipes escaped."""
    return " ".join(text.split()).replace("|", "\\|")


def _anchor(full_name: str) -> str:
    return full_name.lstrip(".").replace(".", "-").lower()


class _Renderer:
    def __init__(self, files: list[descriptor_pb2.FileDescriptorProto]) -> None:
        self.files = files
        self.map_entries: dict[str, descriptor_pb2.DescriptorProto] = {}
        self.known: set[str] = set()
        for proto in files:
            for full, message in _walk_messages(proto.package, proto.message_type):
                self.known.add(full)
                if message.options.map_entry:
                    self.map_entries[full] = message
            for full, _ in _walk_enums(proto.package, proto.message_type, proto.enum_type):
                self.known.add(full)

    def type_ref(self, type_name: str) -> str:
        name = type_name.lstrip(".")
        short = name.rsplit(".", 1)[-1]
        if name in self.known:
            return f"[`{short}`](#{_anchor(name)})"
        return f"`{name}`"

    def field_type(self, field: descriptor_pb2.FieldDescriptorProto) -> str:
        if field.type in (_FDP.TYPE_MESSAGE, _FDP.TYPE_ENUM):
            entry = self.map_entries.get(field.type_name.lstrip("."))
            if entry is not None:
                key, value = entry.field[0], entry.field[1]
                return f"map<{self.field_type(key)}, {self.field_type(value)}>"
            base = self.type_ref(field.type_name)
        else:
            base = f"`{_SCALARS[field.type]}`"
        if field.label == _FDP.LABEL_REPEATED:
            return f"repeated {base}"
        if field.proto3_optional:
            return f"optional {base}"
        return base


def _walk_messages(prefix: str, messages: Iterable[descriptor_pb2.DescriptorProto]):
    for message in messages:
        full = f"{prefix}.{message.name}"
        yield full, message
        yield from _walk_messages(full, message.nested_type)


def _walk_enums(prefix: str, messages, enums):
    for enum in enums:
        yield f"{prefix}.{enum.name}", enum
    for message in messages:
        full = f"{prefix}.{message.name}"
        yield from _walk_enums(full, message.nested_type, message.enum_type)


def _render_file(
    proto: descriptor_pb2.FileDescriptorProto, renderer: _Renderer, *, public: bool, out: list[str]
) -> None:
    comments = _Comments(proto)
    package = proto.package
    title = "Public API" if public else "Internal control plane"
    out.append(f"## {title}: `{package}`")
    out.append("")
    out.append(f"Source: `proto/{proto.name}`")
    out.append("")
    header = comments.get([_FILE_SYNTAX])
    if header:
        out.append(_markdown(header))
        out.append("")

    for s_index, service in enumerate(proto.service):
        full = f"{package}.{service.name}"
        out.append(f'<a id="{_anchor(full)}"></a>')
        out.append("")
        out.append(f"### Service `{service.name}`")
        out.append("")
        text = comments.get([_FILE_SERVICE, s_index])
        if text:
            out.append(_markdown(text))
            out.append("")
        if public:
            out.append("| Method | Request | Reply | SDK retries on UNAVAILABLE |")
            out.append("|---|---|---|---|")
        else:
            out.append("| Method | Request | Reply |")
            out.append("|---|---|---|")
        for method in service.method:
            reply = renderer.type_ref(method.output_type)
            if method.server_streaming:
                reply = f"stream {reply}"
            link = f"[`{method.name}`](#{_anchor(full + '.' + method.name)})"
            row = f"| {link} | {renderer.type_ref(method.input_type)} | {reply} |"
            if public:
                row += " yes |" if method.name in IDEMPOTENT_METHODS else " no |"
            out.append(row)
        out.append("")
        for m_index, method in enumerate(service.method):
            out.append(f'<a id="{_anchor(full + "." + method.name)}"></a>')
            out.append("")
            out.append(f"#### `{service.name}.{method.name}`")
            out.append("")
            stream = "stream " if method.server_streaming else ""
            signature = (
                f"rpc {method.name}({method.input_type.rsplit('.', 1)[-1]}) "
                f"returns ({stream}{method.output_type.rsplit('.', 1)[-1]})"
            )
            out.append(f"`{signature}`")
            out.append("")
            text = comments.get([_FILE_SERVICE, s_index, _SERVICE_METHOD, m_index])
            if text:
                out.append(_markdown(text))
                out.append("")
            if public:
                if method.name in IDEMPOTENT_METHODS:
                    out.append("*SDK:* idempotent; retried automatically on UNAVAILABLE.")
                elif method.name in RETRY_EXCLUDED:
                    out.append(f"*SDK:* never retried automatically: {RETRY_EXCLUDED[method.name]}.")
                else:
                    out.append("*SDK:* not retried automatically.")
                out.append("")

    messages = list(enumerate(proto.message_type))
    if messages:
        out.append(f"### Messages of `{package}`")
        out.append("")
        for index, message in messages:
            _render_message(message, package, [_FILE_MESSAGE, index], comments, renderer, out)
    if proto.enum_type:
        out.append(f"### Enums of `{package}`")
        out.append("")
        for index, enum in enumerate(proto.enum_type):
            _render_enum(enum, package, [_FILE_ENUM, index], comments, out)


def _render_message(
    message: descriptor_pb2.DescriptorProto,
    prefix: str,
    path: list[int],
    comments: _Comments,
    renderer: _Renderer,
    out: list[str],
) -> None:
    if message.options.map_entry:
        return
    full = f"{prefix}.{message.name}"
    out.append(f'<a id="{_anchor(full)}"></a>')
    out.append("")
    out.append(f"#### `{full.split('.', 2)[-1] if prefix.count('.') >= 2 else message.name}`")
    out.append("")
    text = comments.get(path)
    if text:
        out.append(_markdown(text))
        out.append("")
    if message.field:
        out.append("| Field | Number | Type | Description |")
        out.append("|---|---|---|---|")
        for f_index, field in enumerate(message.field):
            description = _one_line(comments.get([*path, _MSG_FIELD, f_index]))
            if field.HasField("oneof_index") and not field.proto3_optional:
                oneof = message.oneof_decl[field.oneof_index].name
                description = f"(one of `{oneof}`) {description}".strip()
            out.append(f"| `{field.name}` | {field.number} | {renderer.field_type(field)} | {description} |")
        out.append("")
    else:
        out.append("*No fields.*")
        out.append("")
    for n_index, nested in enumerate(message.nested_type):
        _render_message(nested, full, [*path, _MSG_NESTED, n_index], comments, renderer, out)
    for e_index, enum in enumerate(message.enum_type):
        _render_enum(enum, full, [*path, _MSG_ENUM, e_index], comments, out)


def _render_enum(
    enum: descriptor_pb2.EnumDescriptorProto,
    prefix: str,
    path: list[int],
    comments: _Comments,
    out: list[str],
) -> None:
    full = f"{prefix}.{enum.name}"
    out.append(f'<a id="{_anchor(full)}"></a>')
    out.append("")
    out.append(f"#### `{enum.name}` (enum)")
    out.append("")
    text = comments.get(path)
    if text:
        out.append(_markdown(text))
        out.append("")
    out.append("| Value | Number | Description |")
    out.append("|---|---|---|")
    for v_index, value in enumerate(enum.value):
        description = _one_line(comments.get([*path, _ENUM_VALUE, v_index]))
        out.append(f"| `{value.name}` | {value.number} | {description} |")
    out.append("")


def render() -> str:
    """The whole reference as Markdown."""
    by_name = {f.name: f for f in file_descriptor_set().file}
    files = [by_name[PUBLIC_FILE], *([by_name[INTERNAL_FILE]] if INTERNAL_FILE in by_name else [])]
    renderer = _Renderer(files)
    out = [
        "# API reference",
        "",
        "<!-- Generated by `python -m cuvis_cluster.client.apidoc` from the comments in proto/. Do not edit;",
        "     change the .proto comments, run `python -m cuvis_cluster.wire.codegen`, then regenerate. -->",
        "",
        "The public contract is `cuvis_ai.v1.CuvisAIService`, wire-compatible with the published",
        "cuvis-ai-schemas 0.14.2. The last column of the method table says whether the Python SDK",
        "(`cuvis_cluster.client`) retries a call by itself when it fails with UNAVAILABLE; see",
        "[troubleshooting](troubleshooting.md) for what every status code means.",
        "",
        "Contents:",
        "",
    ]
    for proto in files:
        for service in proto.service:
            out.append(
                f"- [`{proto.package}.{service.name}`](#{_anchor(proto.package + '.' + service.name)})"
            )
    out.append("")
    for proto in files:
        _render_file(proto, renderer, public=proto.name == PUBLIC_FILE, out=out)
    return "\n".join(out).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m cuvis_cluster.client.apidoc", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="target file, or - for stdout")
    parser.add_argument("--check", action="store_true", help="exit 1 if the target differs; write nothing")
    args = parser.parse_args(argv)
    text = render()
    if args.out == "-":
        sys.stdout.write(text)
        return 0
    target = Path(args.out)
    current = target.read_text() if target.is_file() else None
    if args.check:
        if current != text:
            print(f"{target} is stale; run: python -m cuvis_cluster.client.apidoc", file=sys.stderr)
            return 1
        return 0
    if current != text:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
