"""HPACK (RFC 7541) tuned for a proxy that sees the same few header blocks over and over.

* :class:`Decoder` keeps the full dynamic table, as the peer's encoder requires. A header block that
  does not change the table (the common case once a gRPC client has indexed its headers) decodes to
  the same list every time, so such blocks are cached by their bytes until the table next changes.
* :class:`Encoder` never inserts into the dynamic table: every header is a static-table reference or
  a literal *without indexing*. Output then depends only on the header itself, so each encoded header
  is cached. The cost is a few dozen bytes per block, irrelevant next to the Python work it saves.

Huffman decoding and the static table come from the ``hpack`` package.
"""

from __future__ import annotations

from collections import deque

from hpack.huffman_table import decode_huffman
from hpack.table import HeaderTable

STATIC = tuple((bytes(n), bytes(v)) for n, v in HeaderTable.STATIC_TABLE)
_STATIC_FULL: dict[tuple[bytes, bytes], int] = {}
_STATIC_NAME: dict[bytes, int] = {}
for _i, (_n, _v) in enumerate(STATIC, start=1):
    _STATIC_FULL.setdefault((_n, _v), _i)
    _STATIC_NAME.setdefault(_n, _i)

Header = tuple[bytes, bytes]


class HpackError(Exception):
    """A header block violates RFC 7541 (a connection error: COMPRESSION_ERROR)."""


def _int(data: bytes, pos: int, prefix: int) -> tuple[int, int]:
    mask = (1 << prefix) - 1
    value = data[pos] & mask
    pos += 1
    if value < mask:
        return value, pos
    shift = 0
    while True:
        if pos >= len(data):
            raise HpackError("truncated integer")
        b = data[pos]
        pos += 1
        value += (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return value, pos
        if shift > 28:
            raise HpackError("integer too large")


def _encode_int(value: int, prefix: int, first: int) -> bytes:
    mask = (1 << prefix) - 1
    if value < mask:
        return bytes([first | value])
    out = bytearray([first | mask])
    value -= mask
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


class Decoder:
    def __init__(self, max_table_size: int = 4096, max_header_list: int = 1 << 16) -> None:
        self.max_allowed = max_table_size  # what our SETTINGS_HEADER_TABLE_SIZE promised
        self.max_size = max_table_size
        self.max_header_list = max_header_list
        self.table: deque[Header] = deque()
        self.size = 0
        self._cache: dict[bytes, list[Header]] = {}

    def _get(self, index: int) -> Header:
        if index <= 0:
            raise HpackError("index 0")
        if index <= 61:
            return STATIC[index - 1]
        try:
            return self.table[index - 62]
        except IndexError:
            raise HpackError(f"invalid table index {index}") from None

    def _add(self, header: Header) -> None:
        n = len(header[0]) + len(header[1]) + 32
        while self.table and self.size + n > self.max_size:
            old = self.table.pop()
            self.size -= len(old[0]) + len(old[1]) + 32
        if n <= self.max_size:
            self.table.appendleft(header)
            self.size += n

    def _resize(self, size: int) -> None:
        if size > self.max_allowed:
            raise HpackError(f"table size update {size} above the advertised {self.max_allowed}")
        self.max_size = size
        while self.table and self.size > size:
            old = self.table.pop()
            self.size -= len(old[0]) + len(old[1]) + 32

    def _string(self, data: bytes, pos: int) -> tuple[bytes, int]:
        huff = data[pos] & 0x80
        length, pos = _int(data, pos, 7)
        end = pos + length
        if end > len(data):
            raise HpackError("truncated string")
        raw = data[pos:end]
        if huff:
            try:
                raw = decode_huffman(raw)
            except Exception as exc:
                raise HpackError(f"bad huffman string: {exc}") from None
        return bytes(raw), end

    def decode(self, data: bytes) -> list[Header]:
        cached = self._cache.get(data)
        if cached is not None:
            return cached
        out: list[Header] = []
        changed = False
        pos, n = 0, len(data)
        total = 0
        while pos < n:
            b = data[pos]
            if b & 0x80:  # indexed
                index, pos = _int(data, pos, 7)
                header = self._get(index)
            elif b & 0x40:  # literal with incremental indexing
                index, pos = _int(data, pos, 6)
                name = self._get(index)[0] if index else None
                if name is None:
                    name, pos = self._string(data, pos)
                value, pos = self._string(data, pos)
                header = (name, value)
                self._add(header)
                changed = True
            elif b & 0x20:  # dynamic table size update
                size, pos = _int(data, pos, 5)
                if out:
                    raise HpackError("table size update after a header")
                self._resize(size)
                changed = True
                continue
            else:  # literal without indexing (0000) or never indexed (0001)
                index, pos = _int(data, pos, 4)
                name = self._get(index)[0] if index else None
                if name is None:
                    name, pos = self._string(data, pos)
                value, pos = self._string(data, pos)
                header = (name, value)
            total += len(header[0]) + len(header[1]) + 32
            if total > self.max_header_list:
                raise HpackError("header list too large")
            out.append(header)
        if changed:
            self._cache.clear()
        elif len(data) < 512:
            if len(self._cache) > 256:
                self._cache.clear()
            self._cache[data] = out
        return out


class Encoder:
    """Stateless encoder: static references and literals without indexing only."""

    def __init__(self) -> None:
        self._cache: dict[Header, bytes] = {}

    def encode(self, headers: list[Header] | tuple[Header, ...]) -> bytes:
        cache = self._cache
        parts = []
        for header in headers:
            piece = cache.get(header)
            if piece is None:
                piece = self._one(header)
                if len(cache) > 4096:
                    cache.clear()
                cache[header] = piece
            parts.append(piece)
        return b"".join(parts)

    @staticmethod
    def _one(header: Header) -> bytes:
        name, value = header
        full = _STATIC_FULL.get(header)
        if full is not None:
            return _encode_int(full, 7, 0x80)
        index = _STATIC_NAME.get(name)
        if index is not None:
            head = _encode_int(index, 4, 0x00)
        else:
            head = b"\x00" + _encode_int(len(name), 7, 0x00) + name
        return head + _encode_int(len(value), 7, 0x00) + value
