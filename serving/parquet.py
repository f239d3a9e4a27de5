"""A minimal Parquet writer: flat optional columns, row groups appended page by page (no pyarrow in the image).

pyarrow alone would add ~156 MB to the serving image; the prediction log only needs flat tables of
timestamps, numbers and strings, which take ~150 lines of the format: Thrift-compact metadata,
definition levels as one run (one bit-packed run where some values are null), PLAIN-encoded values,
gzipped unless floats, a column holding one value (the model's name, its version) as a one-entry
dictionary with one run of index 0, which costs nothing per row, and 0/1 labels as the dictionary [0, 1]
with bit-packed indices, one bit a row. A column given as `Pages` is written as one data page per group
of pieces, each group joined only when its page is encoded.
"""

from __future__ import annotations

import json
import math
import struct
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path
from typing import Any

import numpy as np

# parquet.thrift enums
_BOOLEAN, _INT64, _FLOAT, _DOUBLE, _BYTE_ARRAY = 0, 2, 4, 5, 6
_OPTIONAL = 1
_UTF8, _TIMESTAMP_MICROS = 0, 10
_PLAIN, _RLE, _DELTA_LENGTH_BYTE_ARRAY, _RLE_DICTIONARY = 0, 3, 6, 8
_DATA_PAGE, _DICTIONARY_PAGE = 0, 2
_UNCOMPRESSED, _GZIP = 0, 2
# Floats (features, probabilities) are near-random bytes: gzip saves little on them and was ~60 % of the
# log writer's CPU. They are stored plain; strings and timestamps, which compress well, are gzipped.
_PLAIN_KINDS = ("float32", "float64")
# Thrift compact protocol type ids
_T_TRUE, _T_FALSE, _T_I32, _T_I64, _T_BINARY, _T_LIST, _T_STRUCT = 1, 2, 5, 6, 8, 9, 12

# A row group of the prediction log (~20 pages) is a few hundred KB: written to the OS at once (the
# journal flushes it before its entry), not a system call per page.
WRITE_BUFFER = 1 << 20
KINDS = ("timestamp_us", "float32", "float64", "int64", "string")
_PHYSICAL = {"timestamp_us": _INT64, "float32": _FLOAT, "float64": _DOUBLE, "int64": _INT64, "string": _BYTE_ARRAY}
_NUMPY = {"timestamp_us": "<i8", "float32": "<f4", "float64": "<f8", "int64": "<i8"}


@dataclass(frozen=True)
class Constant:
    """The same value (or null) in every row: framed once, repeated."""

    value: Any
    count: int

    def __len__(self) -> int:
        return self.count


Values = Sequence[Any] | np.ndarray  # None is null; for float kinds NaN is null too


@dataclass(frozen=True)
class Pages:
    """A column's values as groups of pieces, one data page per group.

    A group's pieces are joined only when its page is encoded, then dropped: a large row group never
    exists as one array, and the memory of one page is reused for the next (fresh pages of memory cost
    a page fault each, which measured more than the copy itself). A float page without nulls then goes
    to the file's buffer as that array, not copied into bytes first.
    """

    groups: list[list[Values]]
    rows: int = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "rows", sum([sum(map(len, group)) for group in self.groups]))

    def __len__(self) -> int:
        return self.rows


@dataclass(frozen=True)
class Flags:
    """An int64 column of 0s and 1s (a label), as boolean `pages`: stored as the dictionary [0, 1] and each
    page's values as their own bit-packed indices, one bit a row, with no gzip (gzip of 8 bytes a row cost
    25-40 ns a row, the log's dearest column; this ~4)."""

    pages: Pages

    def __len__(self) -> int:
        return len(self.pages)


@dataclass(frozen=True)
class Column:
    name: str
    kind: str  # one of KINDS
    values: Values | Constant | Pages | Flags


_ONE_BYTE = [bytes([i]) for i in range(0x80)]


def _varint(n: int) -> bytes:
    if n < 0x80:  # most of a page header's numbers: no bytearray
        return _ONE_BYTE[n]
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _zigzag(n: int) -> bytes:
    return _varint((n << 1) ^ (n >> 63))


class _Struct:
    """Thrift compact encoding of one struct: fields in increasing id order, then stop."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.last = 0

    def _header(self, fid: int, ttype: int) -> None:
        delta = fid - self.last
        self.buf += bytes([(delta << 4) | ttype]) if 0 < delta <= 15 else bytes([ttype]) + _zigzag(fid)
        self.last = fid

    def i32(self, fid: int, v: int) -> _Struct:
        self._header(fid, _T_I32)
        self.buf += _zigzag(v)
        return self

    def i64(self, fid: int, v: int) -> _Struct:
        self._header(fid, _T_I64)
        self.buf += _zigzag(v)
        return self

    def bool(self, fid: int, v: bool) -> _Struct:
        self._header(fid, _T_TRUE if v else _T_FALSE)
        return self

    def binary(self, fid: int, v: str | bytes) -> _Struct:
        data = v.encode() if isinstance(v, str) else v
        self._header(fid, _T_BINARY)
        self.buf += _varint(len(data)) + data
        return self

    def struct(self, fid: int, v: _Struct) -> _Struct:
        self._header(fid, _T_STRUCT)
        self.buf += v.end()
        return self

    def list(self, fid: int, etype: int, items: list[Any]) -> _Struct:
        self._header(fid, _T_LIST)
        n = len(items)
        self.buf += bytes([(n << 4) | etype]) if n < 15 else bytes([0xF0 | etype]) + _varint(n)
        for item in items:
            if etype == _T_STRUCT:
                self.buf += item if isinstance(item, bytes) else item.end()  # bytes: encoded already
            elif etype == _T_BINARY:
                data = item.encode() if isinstance(item, str) else item
                self.buf += _varint(len(data)) + data
            else:  # i32
                self.buf += _zigzag(item)
        return self

    def end(self) -> bytes:
        return bytes(self.buf) + b"\x00"


Defined = np.ndarray | bool  # per-row mask, or True / False: every row / no row
Buffer = bytes | memoryview  # a part of a page, written to the file as it is (memoryviews of bytes: len is bytes)
# A page: its parts, their size in bytes, its uncompressed size, whether it is a dictionary page, the values'
# encoding.
Page = tuple[list[Buffer], int, int, bool, int]


def _values(col: Column) -> tuple[Defined, int, Buffer]:
    """(defined rows, encoding, the defined values in it): PLAIN, or DELTA_LENGTH_BYTE_ARRAY for strings that
    are all one length. Float kinds: None and NaN are null."""
    if isinstance(col.values, Constant):  # null in every row (one value in every row is a dictionary: _pages)
        return False, _PLAIN, b""
    assert not isinstance(col.values, Pages | Flags), "_pages encodes Pages and Flags one joined group at a time"
    if col.kind in _PLAIN_KINDS:
        floats = np.ascontiguousarray(col.values, dtype=_NUMPY[col.kind])
        # The common case, no NaN, told by one sum (NaN when a value is, and rarely otherwise: +inf and -inf
        # partial sums): the array's own memory is the values, no mask, no copy into bytes.
        with np.errstate(over="ignore", invalid="ignore"):
            if not math.isnan(np.add.reduce(floats)):
                return True, _PLAIN, floats.data.cast("B")
        nan = np.isnan(floats)
        if not nan.any():
            return True, _PLAIN, floats.data.cast("B")
        return ~nan, _PLAIN, floats[~nan].tobytes()
    if isinstance(col.values, np.ndarray) and col.kind != "string":
        return True, _PLAIN, col.values.astype(_NUMPY[col.kind]).tobytes()
    if col.kind == "string" and isinstance(col.values, np.ndarray) and col.values.dtype.kind == "U":
        encoded = _encode_array(col.values)
        if encoded is not None:
            return (True, *encoded)
    values = col.values.tolist() if isinstance(col.values, np.ndarray) else list(col.values)
    if col.kind == "string":
        return _encode_strings(values)
    defined: Defined = True
    if None in values:
        defined = np.fromiter((v is not None for v in values), dtype=bool, count=len(values))
        values = [v for v in values if v is not None]
    return defined, _PLAIN, np.asarray(values, dtype=_NUMPY[col.kind]).tobytes()


def _encode_strings(values: list[Any]) -> tuple[Defined, int, bytes]:
    """(defined rows, encoding, the defined values in it). Logged strings are a few distinct codes, each
    encoded once and joined in one pass in C; codes of one length (airports, carriers) need no length per
    value (DELTA_LENGTH_BYTE_ARRAY), which halves what gzip reads."""
    distinct = set(values)
    defined: Defined = True
    if None in distinct:  # one lookup, not a comparison per value
        defined = np.fromiter((v is not None for v in values), dtype=bool, count=len(values))
        values = [v for v in values if v is not None]
        distinct.discard(None)
    encoded = {v: v.encode() if isinstance(v, str) else bytes(v) for v in distinct}
    lengths = {len(b) for b in encoded.values()}
    if len(lengths) == 1:
        return defined, _DELTA_LENGTH_BYTE_ARRAY, _same_lengths(len(values), lengths.pop()) + b"".join(
            map(encoded.__getitem__, values))
    framed = {v: _frame(b) for v, b in encoded.items()}
    return defined, _PLAIN, b"".join(map(framed.__getitem__, values))


def _same_lengths(count: int, length: int) -> bytes:
    """DELTA_BINARY_PACKED of `count` (>= 1) equal lengths, the lengths part of DELTA_LENGTH_BYTE_ARRAY: the
    header (blocks of 128 deltas in 4 miniblocks, the count, the first value), then per block a minimum
    delta of 0 and four bit widths of 0, so no packed bits."""
    return (_varint(128) + _varint(4) + _varint(count) + _zigzag(length)
            + b"\x00\x00\x00\x00\x00" * ((count - 1 + 127) // 128))


def _plain_one(col: Column) -> bytes:
    """The PLAIN encoding of a Constant column's value."""
    assert isinstance(col.values, Constant)
    if col.kind == "string":
        return _frame(col.values.value)
    return np.asarray([col.values.value], _NUMPY[col.kind]).tobytes()


def _encode_array(strings: np.ndarray) -> tuple[int, bytes] | None:
    """(encoding, values) of a unicode array without a Python loop, when every string is ASCII (codes like
    "JFK"): all of the array's width, DELTA_LENGTH_BYTE_ARRAY (the lengths once, then the bytes); else PLAIN,
    each string its 4-byte length and its bytes, one (rows, 4 + width) byte matrix with the padding of
    shorter strings masked out. None when a string is not ASCII (the caller's loop encodes it).
    """
    rows, width = len(strings), strings.dtype.itemsize // 4
    if not rows or not width:
        return None
    codes = strings.view(np.uint32).reshape(rows, width)
    if (codes >= 128).any():
        return None
    # numpy drops a string's trailing NULs: each is of the full width exactly when its last code is not 0
    # (a strided check, ~3x faster than measuring every length).
    if codes[:, -1].all():
        return _DELTA_LENGTH_BYTE_ARRAY, _same_lengths(rows, width) + codes.astype(np.uint8).tobytes()
    lengths = np.char.str_len(strings).astype("<u4")
    cells = np.empty((rows, 4 + width), dtype=np.uint8)
    cells[:, :4] = lengths.view(np.uint8).reshape(rows, 4)
    cells[:, 4:] = codes
    return _PLAIN, cells[np.arange(4 + width) < (lengths[:, None] + 4)].tobytes()


def _frame(value: str | bytes) -> bytes:
    data = value.encode() if isinstance(value, str) else bytes(value)
    return struct.pack("<I", len(data)) + data


def _codec(col: Column) -> int:
    return _UNCOMPRESSED if col.kind in _PLAIN_KINDS or _dictionary(col) else _GZIP


def _dictionary(col: Column) -> bool:
    """A non-null Constant is stored as a one-entry dictionary and one run of index 0: no copies, no gzip;
    Flags as the dictionary [0, 1] and bit-packed indices."""
    return isinstance(col.values, Flags) or (isinstance(col.values, Constant) and col.values.value is not None)


def _levels(defined: Defined, rows: int) -> bytes:
    """Definition levels (bit width 1) in the RLE/bit-packed hybrid, with their 4-byte length."""
    if isinstance(defined, bool):  # one RLE run
        levels = _varint(rows << 1) + (b"\x01" if defined else b"\x00")
    else:  # one bit-packed run of ceil(n/8) groups of 8
        bits = np.packbits(defined, bitorder="little").tobytes()
        levels = _varint((len(bits) << 1) | 1) + bits
    return struct.pack("<I", len(levels)) + levels


def _pages(col: Column) -> Iterator[Page]:
    """The column chunk's pages: data pages of levels and values (gzip unless floats), or a dictionary page
    and a data page of indices."""
    rows = len(col.values)
    if isinstance(col.values, Flags):
        yield _dictionary_page(np.array([0, 1], "<i8").tobytes(), 2)
        for group in col.values.pages.groups or [[[]]]:
            flags = _join(group)
            # One bit-packed run of ceil(n/8) groups of 8 indices (the last one padded).
            bits = np.packbits(np.asarray(flags, dtype=bool), bitorder="little").tobytes()
            yield _indices_page(len(flags), _varint((len(bits) << 1) | 1) + bits)
        return
    if _dictionary(col):
        yield _dictionary_page(_plain_one(col), 1)
        yield _indices_page(rows, _varint(rows << 1) + b"\x00")  # one run of index 0
        return
    groups: list[list[Any]] = col.values.groups if isinstance(col.values, Pages) else [[col.values]]  # one page
    for group in groups or [[[]]]:
        yield _plain_page(col.kind, group)


def _dictionary_page(entries: bytes, count: int) -> Page:
    """A dictionary page of `count` PLAIN-encoded `entries`, uncompressed."""
    header = _Struct().i32(1, _DICTIONARY_PAGE).i32(2, len(entries)).i32(3, len(entries)).struct(
        7, _Struct().i32(1, count).i32(2, _PLAIN)).end()
    size = len(header) + len(entries)
    return [header, entries], size, size, True, _PLAIN


def _indices_page(rows: int, runs: bytes) -> Page:
    """A data page of `rows` complete rows whose values are dictionary indices of bit width 1, as `runs`
    (the RLE/bit-packed hybrid), uncompressed."""
    raw = _levels(True, rows) + b"\x01" + runs
    return _data_page(rows, _RLE_DICTIONARY, len(raw), [raw])


def _join(pieces: list[Values]) -> Values:
    if len(pieces) == 1:
        return pieces[0]
    if isinstance(pieces[0], np.ndarray):
        return np.concatenate(pieces)
    return list(chain.from_iterable(pieces))


def _plain_page(kind: str, pieces: list[Values]) -> Page:
    """A data page of one group of pieces, PLAIN (or DELTA_LENGTH_BYTE_ARRAY) values, gzipped unless floats;
    its levels and values are parts of the page as they are (a float page's values are its array's memory)."""
    col = Column("", kind, _join(pieces))  # one copy, fewer calls than a part per piece (up to ~8 calls' pieces)
    defined, encoding, values = _values(col)
    levels = _levels(defined, len(col.values))
    size = len(levels) + len(values)
    if _codec(col) != _GZIP:
        return _data_page(len(col.values), encoding, size, [levels, values])
    packer = zlib.compressobj(1, zlib.DEFLATED, 31)  # wbits 31: the gzip container Parquet's GZIP means
    return _data_page(len(col.values), encoding, size, [packer.compress(levels) + packer.compress(values)
                                                        + packer.flush()])


def _data_page(rows: int, encoding: int, raw_size: int, stored: list[Buffer]) -> Page:
    """A v1 data page: header, then the `stored` parts (levels and values, compressed or not; byte buffers),
    `raw_size` bytes uncompressed."""
    stored_size = sum([len(part) for part in stored])
    header = _data_page_header(rows, encoding, raw_size, stored_size)
    return [header, *stored], len(header) + stored_size, len(header) + raw_size, False, encoding


def _data_page_header(rows: int, encoding: int, raw_size: int, stored_size: int) -> bytes:
    """PageHeader(DATA_PAGE, raw_size, stored_size, DataPageHeader(rows, encoding, RLE, RLE)) in Thrift compact,
    byte for byte what `_Struct` writes (tested), without building one: the writer writes one per page.
    Field headers are (id delta << 4 | type I32 or STRUCT); numbers are zigzag varints (2n for n >= 0)."""
    return b"".join((b"\x15\x00\x15", _varint(raw_size << 1), b"\x15", _varint(stored_size << 1), b"\x2c\x15",
                     _varint(rows << 1), b"\x15", _varint(encoding << 1), b"\x15\x06\x15\x06\x00\x00"))


def _schema_element(col: Column) -> _Struct:
    el = _Struct().i32(1, _PHYSICAL[col.kind]).i32(3, _OPTIONAL).binary(4, col.name)
    if col.kind == "string":
        el.i32(6, _UTF8).struct(10, _Struct().struct(1, _Struct()))
    elif col.kind == "timestamp_us":
        unit = _Struct().struct(2, _Struct())  # TimeUnit.MICROS
        el.i32(6, _TIMESTAMP_MICROS).struct(10, _Struct().struct(8, _Struct().bool(1, True).struct(2, unit)))
    return el


class ParquetWriter:
    """Row groups appended to an open file; the footer (schema, row-group index, metadata) on close.

    With a `journal`, each row group's index entry is also appended there once its pages are written,
    so `recover` can complete the file if this process dies before `close` (a Parquet file is unreadable
    without its footer).
    """

    def __init__(self, path: Path, schema: list[tuple[str, str]], metadata: dict[str, str] | None = None,
                 journal: Path | None = None) -> None:
        unknown = {kind for _, kind in schema} - set(KINDS)
        if unknown:
            raise ValueError(f"unsupported column kinds {sorted(unknown)}")
        self.path, self.schema, self.metadata = path, schema, metadata
        self.rows = 0
        self._groups: list[bytes] = []
        self._file = path.open("wb", buffering=WRITE_BUFFER)  # a row group's pages leave in one write
        self._file.write(b"PAR1")
        self._offset = 4
        self._journal = None
        if journal is not None:
            try:
                self._journal = journal.open("wb", buffering=0)
                self._journal.write(_record(json.dumps({"schema": schema, "metadata": metadata or {}}).encode()))
            except OSError:
                self._file.close()
                path.unlink(missing_ok=True)
                raise

    def write(self, columns: list[Column]) -> None:
        """One row group; `columns` match the schema and have the same length."""
        for _ in self.write_steps(columns):
            pass

    def write_steps(self, columns: list[Column]) -> Iterator[None]:
        """`write` a page at a time: yields after each page, so a caller on an event loop can let
        requests run between them."""
        if [(c.name, c.kind) for c in columns] != self.schema:
            raise ValueError("columns do not match the file's schema")
        rows = len(columns[0].values) if columns else 0
        if any(len(c.values) != rows for c in columns):
            raise ValueError("all columns must have the same number of values")
        chunks, total = [], 0
        for col in columns:
            start, uncompressed, dictionary, data_at = self._offset, 0, False, -1
            encodings = {_RLE}  # the levels'; and each page's values'
            for parts, stored, size, is_dictionary, encoding in _pages(col):
                dictionary |= is_dictionary
                encodings.add(encoding)
                if data_at < 0 and not is_dictionary:
                    data_at = self._offset
                for part in parts:
                    self._file.write(part)
                self._offset += stored
                uncompressed += size
                yield
            meta = (_Struct().i32(1, _PHYSICAL[col.kind])
                    .list(2, _T_I32, sorted(encodings))
                    .list(3, _T_BINARY, [col.name]).i32(4, _codec(col)).i64(5, rows).i64(6, uncompressed)
                    .i64(7, self._offset - start).i64(9, data_at))
            if dictionary:
                meta.i64(11, start)  # dictionary_page_offset
            chunks.append(_Struct().i64(2, start).struct(3, meta))
            total += uncompressed
        group = _Struct().list(1, _T_STRUCT, chunks).i64(2, total).i64(3, rows).end()
        self._groups.append(group)
        self.rows += rows
        if self._journal is not None:
            self._file.flush()  # the pages reach the OS before the entry that points past them
            self._journal.write(_record(struct.pack("<QQ", self._offset, rows) + group))

    def close(self) -> None:
        self._file.write(_footer(self.schema, self._groups, self.rows, self.metadata))
        self._file.close()
        if self._journal is not None:
            self._journal.close()


def recover(path: Path, journal: Path) -> int:
    """Complete `path`, left without its footer by a writer that died, from the writer's `journal`: cut
    it after the last row group the journal records whole, append the footer. The rows kept."""
    data = journal.read_bytes()
    records, pos = [], 0
    while pos + 4 <= len(data):
        (n,) = struct.unpack_from("<I", data, pos)
        if pos + 4 + n > len(data):  # the writer died while appending this one
            break
        records.append(data[pos + 4:pos + 4 + n])
        pos += 4 + n
    if not records:
        raise ValueError(f"{journal}: no header record")
    try:
        head = json.loads(records[0])
        schema = [(str(name), str(kind)) for name, kind in head["schema"]]
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{journal}: header record is not a schema ({exc})") from None
    size = path.stat().st_size
    groups, rows, end = [], 0, 4
    for record in records[1:]:
        if len(record) < 16:
            break
        offset, n = struct.unpack_from("<QQ", record)
        if not 4 <= offset <= size:
            break
        groups.append(record[16:])
        rows, end = rows + n, offset
    with path.open("r+b") as f:
        f.truncate(end)
        f.seek(end)
        f.write(_footer(schema, groups, rows, head.get("metadata") or {}))
    return rows


def is_complete(path: Path) -> bool:
    """Whether `path` ends with a Parquet footer (its writer closed it)."""
    try:
        with path.open("rb") as f:
            footer_end = f.seek(-8, 2)  # the file's size less 8
            tail = f.read(8)
    except OSError:  # shorter than 8 bytes
        return False
    return tail[4:] == b"PAR1" and 0 < struct.unpack("<I", tail[:4])[0] <= footer_end


def _record(payload: bytes) -> bytes:
    return struct.pack("<I", len(payload)) + payload


def _footer(schema: list[tuple[str, str]], groups: list[bytes], rows: int, metadata: dict[str, str] | None) -> bytes:
    columns = [Column(name, kind, Constant(None, 0)) for name, kind in schema]
    root = _Struct().binary(4, "schema").i32(5, len(columns))
    footer = _Struct().i32(1, 1).list(2, _T_STRUCT, [root, *map(_schema_element, columns)]).i64(3, rows)
    footer.list(4, _T_STRUCT, groups)
    if metadata:
        footer.list(5, _T_STRUCT, [_Struct().binary(1, k).binary(2, v) for k, v in metadata.items()])
    footer.binary(6, "flights-mlops serving")
    tail = footer.end()
    return tail + struct.pack("<I", len(tail)) + b"PAR1"


def write_table(path: Path, columns: list[Column], metadata: dict[str, str] | None = None) -> None:
    """Write `columns` (all the same length) to `path` as one row group."""
    writer = ParquetWriter(path, [(c.name, c.kind) for c in columns], metadata)
    try:
        writer.write(columns)
    finally:
        writer.close()
