"""Read one string field out of a gRPC request while it streams by, without decoding the message.

The gateway routes on ``session_id``, which is field 1 of almost every request (field 4 of
RestoreTrainRunRequest). :class:`FieldScanner` is fed the raw DATA bytes of the request in whatever
pieces the network delivers: the 5-byte gRPC message prefix, then the protobuf wire format. It walks
the *top-level* tags only and skips every other field by its length, so a 600 MB tensor field costs
one subtraction, never a copy or a parse.

Rules that keep routing honest:

* The value is known (``decided``) as soon as the field has been read, or when the message ends
  without it (proto3: absent string == ``""``). Routing can start at that point while the rest of
  the message is still arriving.
* The scanner keeps walking to the end of the message. Protobuf lets a repeated occurrence of a
  scalar field override the first; a request that names two *different* session ids is rejected
  (:class:`ScanError`) before its last byte reaches a worker, so nobody can route on one session and
  act on another.
* Exactly one request message per call (all routed methods are unary or server-streaming).
* Compressed messages (flag 1 in the gRPC prefix) are refused with UNIMPLEMENTED naming the
  encoding. Routing one honestly means inflating all of it on the event loop (the duplicate rule
  above): measured, a 1 MB gzip message inflates to 1 GiB in about 1 s of CPU, so each such request
  would stall every other client for a second (docs/gateway-design.md, "Compression").
"""

from __future__ import annotations

from cuvis_cluster import errors

_TAG, _VARINT, _LEN, _SKIP, _CAPTURE = range(5)


class ScanError(Exception):
    """The request cannot be routed as sent; ``error`` is the domain error to answer with."""

    def __init__(self, message: str, kind: type[errors.CuvisError] = errors.InvalidArgument) -> None:
        super().__init__(message)
        self.error = kind(message)


def message_too_large(size: int, limit: int) -> str:
    return f"request message of {size} bytes is larger than the limit of {limit} bytes (max_message_bytes)"


class _ProtoWalker:
    """Top-level protobuf wire-format walker that captures one length-delimited field."""

    def __init__(self, number: int, max_value: int, field_name: str) -> None:
        self.number = number
        self.max_value = max_value
        self.field_name = field_name
        self.state = _TAG
        self.acc = 0
        self.shift = 0
        self.left = 0
        self.field = 0
        self.groups: list[int] = []
        self.capture = bytearray()
        self.values: list[bytes] = []

    def at_boundary(self) -> bool:
        return self.state == _TAG and self.shift == 0 and not self.groups

    def feed(self, buf: memoryview) -> None:
        i, n = 0, len(buf)
        while i < n:
            st = self.state
            if st == _SKIP:
                k = min(self.left, n - i)
                i += k
                self.left -= k
                if not self.left:
                    self.state = _TAG
                continue
            if st == _CAPTURE:
                k = min(self.left, n - i)
                self.capture += buf[i : i + k]
                i += k
                self.left -= k
                if not self.left:
                    self._captured()
                continue
            b = buf[i]
            i += 1
            self.acc |= (b & 0x7F) << self.shift
            if b & 0x80:
                self.shift += 7
                if self.shift >= 70:
                    raise ScanError("malformed request: varint longer than 10 bytes")
                continue
            value, self.acc, self.shift = self.acc, 0, 0
            if st == _TAG:
                self._tag(value)
            elif st == _VARINT:
                self.state = _TAG
            else:  # _LEN
                if value and self.field == self.number and not self.groups:
                    if value > self.max_value:
                        raise ScanError(f"{self.field_name} is longer than {self.max_value} bytes")
                    self.state, self.left = _CAPTURE, value
                elif self.field == self.number and not self.groups:
                    self.capture.clear()
                    self._captured()
                elif value:
                    self.state, self.left = _SKIP, value
                else:
                    self.state = _TAG

    def _tag(self, tag: int) -> None:
        field, wire = tag >> 3, tag & 7
        if field == 0:
            raise ScanError("malformed request: field number 0")
        if field == self.number and not self.groups and wire not in (2, 4):
            raise ScanError(f"malformed request: {self.field_name} (field {field}) is not a string")
        if wire == 0:
            self.state = _VARINT
        elif wire == 1:
            self.state, self.left = _SKIP, 8
        elif wire == 5:
            self.state, self.left = _SKIP, 4
        elif wire == 2:
            self.state, self.field = _LEN, field
        elif wire == 3:
            self.groups.append(field)
        elif wire == 4:
            if not self.groups or self.groups.pop() != field:
                raise ScanError("malformed request: unbalanced group")
        else:
            raise ScanError(f"malformed request: wire type {wire}")

    def _captured(self) -> None:
        value = bytes(self.capture)
        self.capture.clear()
        self.state = _TAG
        if self.values and value != self.values[0]:
            raise ScanError(f"{self.field_name} appears more than once with different values")
        self.values.append(value)


class FieldScanner:
    """Feed request DATA; ``decided`` tells when ``value`` (the field as ``str``) is known."""

    def __init__(
        self,
        number: int,
        *,
        encoding: str | None = None,
        max_value: int = 1024,
        field_name: str = "session_id",
        max_message: int = 0,
    ) -> None:
        self.number = number
        self.max_message = max_message
        self.encoding = (encoding or "identity").lower()
        self.field_name = field_name
        self._walker = _ProtoWalker(number, max_value, field_name)
        self._prefix = bytearray()
        self._msg_left = -1  # -1: reading the prefix; 0: message complete
        self.messages = 0
        self.complete = False

    @property
    def decided(self) -> bool:
        return bool(self._walker.values) or self.complete

    @property
    def found(self) -> bool:
        return bool(self._walker.values)

    @property
    def value(self) -> str:
        raw = self._walker.values[0] if self._walker.values else b""
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise ScanError(f"{self.field_name} is not valid UTF-8") from None

    def feed(self, data: memoryview | bytes) -> None:
        buf = memoryview(data)
        while buf:
            if self.complete:
                raise ScanError("more than one request message for a method that takes one")
            if self._msg_left < 0:
                k = min(5 - len(self._prefix), len(buf))
                self._prefix += buf[:k]
                buf = buf[k:]
                if len(self._prefix) == 5:
                    self._start_message()
                continue
            k = min(self._msg_left, len(buf))
            piece, buf = buf[:k], buf[k:]
            self._msg_left -= k
            self._walker.feed(piece)
            if not self._msg_left:
                self._end_message()

    def finish(self) -> None:
        """The request stream ended: the message must be complete."""
        if not self.complete:
            if self._msg_left < 0 and not self._prefix:
                raise ScanError("the request carried no message")
            raise ScanError("the request ended in the middle of its message")

    def _start_message(self) -> None:
        flag = self._prefix[0]
        self._msg_left = int.from_bytes(self._prefix[1:5], "big")
        if self.max_message and self._msg_left > self.max_message:
            raise ScanError(message_too_large(self._msg_left, self.max_message), errors.ResourceExhausted)
        if flag not in (0, 1):
            raise ScanError(f"malformed gRPC message prefix (flag {flag})")
        if flag == 1:
            if self.encoding == "identity":
                raise ScanError("compressed message without a grpc-encoding header")
            raise ScanError(
                f"the gateway does not accept compressed requests (grpc-encoding: {self.encoding}); "
                "send them uncompressed",
                errors.Unimplemented,
            )
        if not self._msg_left:
            self._end_message()

    def _end_message(self) -> None:
        if not self._walker.at_boundary():
            raise ScanError("malformed request: the message ends inside a field")
        self.messages += 1
        self.complete = True
