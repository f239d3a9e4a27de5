"""The binary tensor data extension of OIP v2 (Triton's): raw little-endian numbers, length-prefixed strings."""

from __future__ import annotations

import math
import struct

import numpy as np

from serving.model import InputError

NUMERIC = {"FP16": "<f2", "FP32": "<f4", "FP64": "<f8", "INT8": "i1", "INT16": "<i2", "INT32": "<i4",
           "INT64": "<i8", "UINT8": "u1", "UINT16": "<u2", "UINT32": "<u4", "UINT64": "<u8"}


def numbers(blob: bytes | memoryview, datatype: str, count: int, where: str) -> np.ndarray:
    """Raw little-endian numbers as float32; NaN is how binary data says "missing", infinity is refused."""
    if datatype not in NUMERIC:
        raise InputError(f"{where}: datatype {datatype} is not numeric")
    dtype = np.dtype(NUMERIC[datatype])
    if len(blob) != count * dtype.itemsize:
        raise InputError(f"{where}: {len(blob)} binary bytes, but {count} {datatype} values take "
                         f"{count * dtype.itemsize}")
    values = np.frombuffer(blob, dtype).astype(np.float32, copy=False)
    # The sum is finite when no value is infinite or NaN (it may overflow too): only then look closer.
    if not math.isfinite(np.add.reduce(values)) and np.isinf(values).any():
        raise InputError(f"{where}[{int(np.flatnonzero(np.isinf(values))[0])}]: infinite or out of FP32 range")
    return values


def strings(blob: bytes | memoryview, count: int, where: str) -> list[str] | np.ndarray:
    """BYTES in binary form: each element a 4-byte little-endian length, then that many UTF-8 bytes."""
    blob = bytes(blob)  # the checks below need bytes' methods; strings are the small part of a request
    if count and len(blob) >= 4:
        width = struct.unpack_from("<I", blob)[0]
        stride = 4 + width
        # All one length (codes like "JFK"), ASCII (so are the length bytes then), no NUL: checked on strided
        # byte slices (C loops, ~2x faster than numpy on strided views), then widened in one numpy step.
        if (0 < width < 128 and len(blob) == count * stride and blob.isascii()
                and all(blob[i::stride] == blob[i:i + 1] * count for i in range(4))
                and not any(b"\0" in blob[i::stride] for i in range(4, stride))):
            # Each byte widened to a UCS-4 code point is the unicode array onnxruntime takes as it is
            # (30x faster than numpy's bytes-to-str conversion).
            cells = np.frombuffer(blob, dtype=np.uint8).reshape(count, stride)
            return cells[:, 4:].astype(np.uint32).view(f"<U{width}").reshape(count)
    out: list[str] = []
    pos = 0
    try:
        for _ in range(count):
            (n,) = struct.unpack_from("<I", blob, pos)
            if pos + 4 + n > len(blob):
                raise InputError(f"{where}[{len(out)}]: element runs past the binary data")
            out.append(blob[pos + 4:pos + 4 + n].decode())
            pos += 4 + n
    except struct.error:
        raise InputError(f"{where}: binary data ends after {len(out)} of {count} BYTES elements") from None
    except UnicodeDecodeError:
        raise InputError(f"{where}[{len(out)}]: not UTF-8") from None
    if pos != len(blob):
        raise InputError(f"{where}: {len(blob) - pos} binary bytes after {count} BYTES elements")
    return out
