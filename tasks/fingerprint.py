"""The snapshot fingerprint: a hash of the rows' content that ignores how they were cut into batches."""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


class ContentHash:
    """Three streams per column (validity, value lengths, value bytes), fed batch by batch.

    Hashing a stream does not depend on how it was cut, so the digest is the same for any batch
    or file layout; each kind of content has its own stream so batch boundaries cannot interleave.
    """

    def __init__(self, columns: int) -> None:
        self.streams = [(hashlib.sha256(), hashlib.sha256(), hashlib.sha256()) for _ in range(columns)]

    def update(self, batch: pa.RecordBatch) -> None:
        for streams, column in zip(self.streams, batch.columns, strict=True):
            _hash_values(streams, column)

    def hexdigest(self, schema_text: str) -> str:
        digest = hashlib.sha256(schema_text.encode())
        for streams in self.streams:
            for stream in streams:
                digest.update(stream.digest())
        return digest.hexdigest()


def _hash_values(digests: tuple[Any, Any, Any], arr: pa.Array) -> None:
    """Feed one column's validity, value lengths and non-null value bytes into its streams."""
    validity, lengths, digest = digests
    if arr.null_count:
        validity.update(pc.is_valid(arr).to_numpy(zero_copy_only=False).tobytes())
        values = arr.drop_null()
    else:  # the same bytes as above, without building them value by value
        validity.update(b"\x01" * len(arr))
        values = arr
    if pa.types.is_large_string(values.type):
        values = values.cast(pa.string())
    kind = values.type
    if pa.types.is_null(kind) or len(values) == 0:
        return
    if pa.types.is_string(kind) or pa.types.is_binary(kind):
        offsets = np.frombuffer(values.buffers()[1], np.int32)[values.offset:values.offset + len(values) + 1]
        lengths.update(np.diff(offsets).astype(np.int32).tobytes())
        digest.update(memoryview(values.buffers()[2])[offsets[0]:offsets[-1]])
        return
    if pa.types.is_boolean(kind) or not _byte_width(kind):
        # Each value terminated, so the concatenation is the same however batches were cut.
        digest.update(values.to_numpy(zero_copy_only=False).tobytes() if pa.types.is_boolean(kind)
                      else "".join(f"{v!r}\x1f" for v in values.to_pylist()).encode())
        return
    width = _byte_width(kind)
    digest.update(memoryview(values.buffers()[1])[values.offset * width:(values.offset + len(values)) * width])


def _byte_width(kind: pa.DataType) -> int:
    """Bytes per value of a fixed-width type (ints, floats, timestamps, decimals), else 0."""
    try:
        return int(kind.bit_width // 8) if kind.bit_width % 8 == 0 else 0
    except ValueError:
        return 0
