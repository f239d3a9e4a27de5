"""Caller-facing messages for invalid JSON: msgspec's errors reworded with their path, NaN, Infinity and
broken text located."""

from __future__ import annotations

import json
import math
import re
from typing import Any

import msgspec

from serving.model import InputError

_AT = re.compile(r"^(.*?)(?: - at `\$(.*)`)?$", re.DOTALL)


def split(exc: msgspec.ValidationError) -> tuple[str, str]:
    """msgspec's "Expected `int`, got `str` - at `$.records[0].x`" -> ("expected `int`, got `str`", "records[0].x")."""
    m = _AT.match(str(exc))
    message, path = (m.group(1), m.group(2) or "") if m else (str(exc), "")
    return message[:1].lower() + message[1:], path.lstrip(".")


def path_and_message(exc: msgspec.ValidationError, datatype: str) -> str:
    message, path = split(exc)
    return f"{path}: {message} ({datatype} tensor)"


def malformed(body: bytes, exc: msgspec.DecodeError) -> InputError:
    """Not JSON. If only what the stdlib parser accepts made it so (NaN, Infinity, half a surrogate pair),
    say where."""
    try:
        doc = json.loads(body)
    except ValueError:
        return InputError(f"body: not valid JSON ({exc})")
    found = invalid_value(doc, "")
    if found is not None:
        return InputError(f"{found[0] or 'body'}: {found[1]}")
    return InputError(f"body: not valid JSON ({exc})")


def not_utf8(where: str, data: bytes | memoryview | msgspec.Raw) -> InputError:
    """A string in the JSON that is not UTF-8: the byte where it breaks (msgspec does not say)."""
    try:
        bytes(data).decode()
    except UnicodeDecodeError as exc:
        return InputError(f"{where}: not UTF-8 at byte {exc.start} ({exc.reason}); JSON text is UTF-8")
    return InputError(f"{where}: not UTF-8; JSON text is UTF-8")


def invalid_value(doc: Any, path: str) -> tuple[str, str] | None:
    """(path, why) of the first value JSON does not allow that Python's parser took: NaN or Infinity, or a
    string with an unpaired surrogate escape (like "\\ud800")."""
    if isinstance(doc, float):
        return None if math.isfinite(doc) else (
            path, "NaN and Infinity are not JSON numbers; send null for a missing value")
    if isinstance(doc, str):
        if doc.isascii():
            return None
        try:
            doc.encode()
        except UnicodeEncodeError:
            return path, "a \\u escape of half a surrogate pair is not a character"
        return None
    if isinstance(doc, dict):
        if path.startswith("inputs[") and isinstance(doc.get("name"), str):
            path = f"inputs.{doc['name']}"  # name the tensor, not its position
        items = [(f"{path}.{k}" if path else str(k), v) for k, v in doc.items()]
    elif isinstance(doc, list):
        items = [(f"{path}[{i}]", v) for i, v in enumerate(doc)]
    else:
        return None
    for sub, value in items:
        found = invalid_value(value, sub)
        if found is not None:
            return found
    return None
