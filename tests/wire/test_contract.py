"""The public contract is wire-identical to the published cuvis-ai-schemas 0.14.2 descriptor.

Our generated module and the published ``cuvis_ai_schemas.grpc.v1.cuvis_ai_pb2`` define the same full names,
so both cannot live in one process's default descriptor pool. The published FileDescriptorProto is therefore
dumped by a subprocess and compared here as plain data. The comparison collects every mismatch before failing.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterable

import pytest
from google.protobuf import descriptor_pb2

from cuvis_cluster.wire.pb import pb

FDP = descriptor_pb2.FileDescriptorProto
Field = descriptor_pb2.FieldDescriptorProto
SERVICE = "CuvisAIService"
RUNTIME_SERVICE = "RunRuntime"
# RPCs we serve beyond the published CuvisAIService (older clients still call ClearPluginCache).
ADDED_METHODS = {
    "ClearPluginCache": (".cuvis_ai.v1.ClearPluginCacheRequest", ".cuvis_ai.v1.ClearPluginCacheResponse")
}
RUNTIME_ONLY = {
    "cuvis_ai.v1.InitializeSessionRequest",
    "cuvis_ai.v1.InitializeSessionResponse",
    "cuvis_ai.v1.StopRunRequest",
    "cuvis_ai.v1.StopRunResponse",
    "cuvis_ai.v1.HealthCheckRequest",
    "cuvis_ai.v1.HealthCheckResponse",
}

_DUMP_PUBLISHED = """
import sys
from google.protobuf import descriptor_pb2
from cuvis_ai_schemas.grpc.v1 import cuvis_ai_pb2
proto = descriptor_pb2.FileDescriptorProto()
cuvis_ai_pb2.DESCRIPTOR.CopyToProto(proto)
sys.stdout.buffer.write(proto.SerializeToString())
"""


# ----------------------------------------------------------------------------------------- comparator


def _messages(fdp: FDP) -> dict[str, descriptor_pb2.DescriptorProto]:
    """Every message (nested ones included, map entries too) by full name without leading dot."""
    out: dict[str, descriptor_pb2.DescriptorProto] = {}

    def walk(prefix: str, messages: Iterable[descriptor_pb2.DescriptorProto]) -> None:
        for m in messages:
            out[f"{prefix}.{m.name}"] = m
            walk(f"{prefix}.{m.name}", m.nested_type)

    walk(fdp.package, fdp.message_type)
    return out


def _enums(fdp: FDP) -> dict[str, descriptor_pb2.EnumDescriptorProto]:
    out = {f"{fdp.package}.{e.name}": e for e in fdp.enum_type}
    for name, m in _messages(fdp).items():
        out.update({f"{name}.{e.name}": e for e in m.enum_type})
    return out


def _reachable(fdp: FDP, service: str) -> set[str]:
    """Full names of the messages a service's methods use, transitively through message fields."""
    messages = _messages(fdp)
    todo = [
        t.lstrip(".")
        for s in fdp.service
        if s.name == service
        for m in s.method
        for t in (m.input_type, m.output_type)
    ]
    seen: set[str] = set()
    while todo:
        name = todo.pop()
        if name in seen or name not in messages:
            continue
        seen.add(name)
        msg = messages[name]
        todo.extend(f.type_name.lstrip(".") for f in msg.field if f.type == Field.TYPE_MESSAGE)
        todo.extend(f"{name}.{n.name}" for n in msg.nested_type)
    return seen


def runtime_only_messages(published: FDP) -> set[str]:
    """Published messages used by RunRuntime and by nothing in CuvisAIService."""
    return _reachable(published, RUNTIME_SERVICE) - _reachable(published, SERVICE)


def _field_facts(f: Field, msg: descriptor_pb2.DescriptorProto) -> dict[str, object]:
    oneof = msg.oneof_decl[f.oneof_index].name if f.HasField("oneof_index") else None
    return {
        "name": f.name,
        "type": Field.Type.Name(f.type),
        "type_name": f.type_name,
        "label": Field.Label.Name(f.label),
        "proto3_optional": f.proto3_optional,
        "oneof": oneof,
        "packed": f.options.packed if f.options.HasField("packed") else None,
    }


def _compare_message(
    name: str, pub: descriptor_pb2.DescriptorProto, ours: descriptor_pb2.DescriptorProto
) -> list[str]:
    problems: list[str] = []
    if pub.options.map_entry != ours.options.map_entry:
        problems.append(
            f"message {name}: map_entry {ours.options.map_entry} (published {pub.options.map_entry})"
        )
    pub_fields = {f.number: f for f in pub.field}
    our_fields = {f.number: f for f in ours.field}
    for number, pf in sorted(pub_fields.items()):
        of = our_fields.get(number)
        if of is None:
            problems.append(f"message {name}: field {number} ({pf.name}) missing")
            continue
        pub_facts, our_facts = _field_facts(pf, pub), _field_facts(of, ours)
        for key, expected in pub_facts.items():
            if our_facts[key] != expected:
                problems.append(
                    f"message {name}: field {number} ({pf.name}) {key} is {our_facts[key]!r}, "
                    f"published {expected!r}"
                )
    for number, of in sorted(our_fields.items()):
        if number not in pub_fields:
            problems.append(
                f"message {name}: unexpected field {number} ({of.name}) not in the published contract"
            )
    pub_oneofs = [o.name for o in pub.oneof_decl]
    our_oneofs = [o.name for o in ours.oneof_decl]
    if pub_oneofs != our_oneofs:
        problems.append(f"message {name}: oneofs {our_oneofs}, published {pub_oneofs}")
    return problems


def _compare_enum(
    name: str, pub: descriptor_pb2.EnumDescriptorProto, ours: descriptor_pb2.EnumDescriptorProto
) -> list[str]:
    problems: list[str] = []
    pub_values = {v.name: v.number for v in pub.value}
    our_values = {v.name: v.number for v in ours.value}
    for value, number in pub_values.items():
        if value not in our_values:
            problems.append(f"enum {name}: value {value} = {number} missing")
        elif our_values[value] != number:
            problems.append(f"enum {name}: value {value} is {our_values[value]}, published {number}")
    for value, number in our_values.items():
        if value not in pub_values:
            problems.append(f"enum {name}: unexpected value {value} = {number}")
    if pub.options.allow_alias != ours.options.allow_alias:
        problems.append(
            f"enum {name}: allow_alias {ours.options.allow_alias}, published {pub.options.allow_alias}"
        )
    return problems


def compare_contract(published: FDP, ours: FDP) -> list[str]:
    """Every wire-relevant difference between the published contract and ours, as readable lines."""
    problems: list[str] = []
    for attr in ("package", "syntax"):
        if getattr(published, attr) != getattr(ours, attr):
            problems.append(f"file {attr} is {getattr(ours, attr)!r}, published {getattr(published, attr)!r}")

    # Services: exactly CuvisAIService, with every published method unchanged plus the added ones.
    services = {s.name: s for s in ours.service}
    for extra in sorted(set(services) - {SERVICE}):
        problems.append(f"service {extra}: unexpected (only {SERVICE} belongs to the public contract)")
    pub_service = next(s for s in published.service if s.name == SERVICE)
    our_service = services.get(SERVICE)
    if our_service is None:
        problems.append(f"service {SERVICE} missing")
    else:
        our_methods = {m.name: m for m in our_service.method}
        for pm in pub_service.method:
            om = our_methods.get(pm.name)
            if om is None:
                problems.append(f"rpc {SERVICE}.{pm.name} missing")
                continue
            for key in ("input_type", "output_type", "client_streaming", "server_streaming"):
                mine, theirs = getattr(om, key), getattr(pm, key)
                if mine != theirs:
                    problems.append(f"rpc {SERVICE}.{pm.name} {key} is {mine!r}, published {theirs!r}")
        pub_method_names = {m.name for m in pub_service.method}
        for name, om in our_methods.items():
            if name in pub_method_names:
                continue
            if name not in ADDED_METHODS:
                problems.append(
                    f"rpc {SERVICE}.{name}: unexpected (not published and not a documented addition)"
                )
            elif (
                (om.input_type, om.output_type) != ADDED_METHODS[name]
                or om.server_streaming
                or om.client_streaming
            ):
                problems.append(f"rpc {SERVICE}.{name}: signature differs from the documented addition")
        for name in ADDED_METHODS:
            if name not in our_methods:
                problems.append(f"rpc {SERVICE}.{name} missing (documented addition)")

    # Messages: all published ones except those only RunRuntime uses; nothing else.
    pub_messages = _messages(published)
    our_messages = _messages(ours)
    required = set(pub_messages) - runtime_only_messages(published)
    for name in sorted(required):
        if name not in our_messages:
            problems.append(f"message {name} missing")
        else:
            problems.extend(_compare_message(name, pub_messages[name], our_messages[name]))
    for name in sorted(set(our_messages) - required):
        problems.append(f"message {name}: unexpected (not in the published contract)")

    # Enums: all published ones except those nested in messages left out above.
    pub_enums, our_enums = _enums(published), _enums(ours)
    pub_enums = {
        name: e for name, e in pub_enums.items() if name.rsplit(".", 1)[0] in required | {published.package}
    }
    for name in sorted(pub_enums):
        if name not in our_enums:
            problems.append(f"enum {name} missing")
        else:
            problems.extend(_compare_enum(name, pub_enums[name], our_enums[name]))
    for name in sorted(set(our_enums) - set(pub_enums)):
        problems.append(f"enum {name}: unexpected (not in the published contract)")
    return problems


# ----------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def published() -> FDP:
    proc = subprocess.run([sys.executable, "-c", _DUMP_PUBLISHED], capture_output=True, timeout=120)
    assert proc.returncode == 0, (
        "could not load the reference cuvis_ai_schemas.grpc.v1.cuvis_ai_pb2 "
        "(pip install -e '.[dev]' installs cuvis-ai-schemas==0.14.2):\n"
        f"{proc.stderr.decode(errors='replace')}"
    )
    return FDP.FromString(proc.stdout)


@pytest.fixture(scope="module")
def ours() -> FDP:
    proto = FDP()
    pb.DESCRIPTOR.CopyToProto(proto)
    return proto


def _copy(fdp: FDP) -> FDP:
    out = FDP()
    out.CopyFrom(fdp)
    return out


# ----------------------------------------------------------------------------------------- tests


def test_published_reference_is_the_expected_one(published: FDP) -> None:
    service = next(s for s in published.service if s.name == SERVICE)
    assert published.package == "cuvis_ai.v1"
    assert len(service.method) == 28
    assert runtime_only_messages(published) == RUNTIME_ONLY


def test_contract_matches_published(published: FDP, ours: FDP) -> None:
    problems = compare_contract(published, ours)
    assert not problems, f"{len(problems)} contract mismatch(es):\n" + "\n".join(problems)


def test_clear_plugin_cache_added_and_run_runtime_left_out(ours: FDP) -> None:
    assert [s.name for s in ours.service] == [SERVICE]
    methods = {m.name: m for m in ours.service[0].method}
    assert "ClearPluginCache" in methods
    assert methods["ClearPluginCache"].input_type == ".cuvis_ai.v1.ClearPluginCacheRequest"
    assert methods["ClearPluginCache"].output_type == ".cuvis_ai.v1.ClearPluginCacheResponse"
    assert methods["Train"].server_streaming and not methods["Train"].client_streaming
    assert len(methods) == 29
    assert not RUNTIME_ONLY & set(_messages(ours))


def _field(fdp: FDP, message: str, field: str) -> Field:
    msg = next(m for m in fdp.message_type if m.name == message)
    return next(f for f in msg.field if f.name == field)


def _change_number(f: FDP) -> None:
    _field(f, "Tensor", "dtype").number = 12


def _change_type(f: FDP) -> None:
    _field(f, "Context", "epoch").type = Field.TYPE_INT64


def _change_label(f: FDP) -> None:
    _field(f, "PipelineMetadata", "tags").label = Field.LABEL_OPTIONAL


def _drop_optional(f: FDP) -> None:
    fld = _field(f, "BoundingBox", "object_id")
    fld.proto3_optional = False
    fld.ClearField("oneof_index")
    msg = next(m for m in f.message_type if m.name == "BoundingBox")
    del msg.oneof_decl[:]


def _leave_oneof(f: FDP) -> None:
    _field(f, "LoadPipelineWeightsRequest", "weights_bytes").ClearField("oneof_index")


def _map_value_type(f: FDP) -> None:
    msg = next(m for m in f.message_type if m.name == "InferenceResponse")
    entry = next(n for n in msg.nested_type if n.name == "MetricsEntry")
    next(x for x in entry.field if x.name == "value").type = Field.TYPE_DOUBLE


def _enum_value(f: FDP) -> None:
    enum = next(e for e in f.enum_type if e.name == "DType")
    next(v for v in enum.value if v.name == "D_TYPE_UINT16").number = 9


def _streaming(f: FDP) -> None:
    next(m for m in f.service[0].method if m.name == "Train").server_streaming = False


def _response_type(f: FDP) -> None:
    next(m for m in f.service[0].method if m.name == "Inference").output_type = ".cuvis_ai.v1.TrainResponse"


def _drop_method(f: FDP) -> None:
    methods = f.service[0].method
    del methods[[m.name for m in methods].index("GetTrainStatus")]


def _rename_message(f: FDP) -> None:
    next(m for m in f.message_type if m.name == "ShmRef").name = "SharedMemoryRef"


def _add_runtime(f: FDP) -> None:
    f.service.add(name=RUNTIME_SERVICE)


def _drop_clear_cache(f: FDP) -> None:
    methods = f.service[0].method
    del methods[[m.name for m in methods].index("ClearPluginCache")]


INJECTIONS: dict[str, tuple[Callable[[FDP], None], str]] = {
    "field number": (_change_number, "cuvis_ai.v1.Tensor: field 2 (dtype) missing"),
    "field type": (_change_type, "cuvis_ai.v1.Context: field 2 (epoch) type is 'TYPE_INT64'"),
    "field label": (_change_label, "cuvis_ai.v1.PipelineMetadata: field 5 (tags) label is 'LABEL_OPTIONAL'"),
    "proto3 optional": (
        _drop_optional,
        "cuvis_ai.v1.BoundingBox: field 6 (object_id) proto3_optional is False",
    ),
    "oneof membership": (_leave_oneof, "field 3 (weights_bytes) oneof is None, published 'weights_source'"),
    "map value type": (_map_value_type, "cuvis_ai.v1.InferenceResponse.MetricsEntry: field 2 (value) type"),
    "enum value": (_enum_value, "enum cuvis_ai.v1.DType: value D_TYPE_UINT16 is 9, published 8"),
    "streaming": (_streaming, "rpc CuvisAIService.Train server_streaming is False"),
    "response type": (
        _response_type,
        "rpc CuvisAIService.Inference output_type is '.cuvis_ai.v1.TrainResponse'",
    ),
    "missing rpc": (_drop_method, "rpc CuvisAIService.GetTrainStatus missing"),
    "renamed message": (_rename_message, "message cuvis_ai.v1.ShmRef missing"),
    "runtime service": (_add_runtime, "service RunRuntime: unexpected"),
    "missing addition": (_drop_clear_cache, "rpc CuvisAIService.ClearPluginCache missing"),
}


@pytest.mark.parametrize("injection", sorted(INJECTIONS))
def test_comparator_catches_injected_mismatch(published: FDP, ours: FDP, injection: str) -> None:
    mutate, expected = INJECTIONS[injection]
    broken = _copy(ours)
    mutate(broken)
    problems = compare_contract(published, broken)
    assert any(expected in p for p in problems), f"{expected!r} not reported; got:\n" + "\n".join(problems)


def test_comparator_reports_every_mismatch_at_once(published: FDP, ours: FDP) -> None:
    broken = _copy(ours)
    for mutate, _ in INJECTIONS.values():
        mutate(broken)
    problems = compare_contract(published, broken)
    missing = [expected for _, expected in INJECTIONS.values() if not any(expected in p for p in problems)]
    assert not missing, f"not reported: {missing}\ngot:\n" + "\n".join(problems)
