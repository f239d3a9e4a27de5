"""Caller-facing messages for invalid JSON: msgspec's errors reworded with their path, NaN/Infinity located."""

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
    """Not JSON. If only NaN/Infinity made it so, say where: the stdlib parser accepts them."""
    try:
        doc = json.loads(body)
    except ValueError:
        return InputError(f"body: not valid JSON ({exc})")
    path = non_finite(doc, "")
    if path is not None:
        return InputError(f"{path or 'body'}: NaN and Infinity are not JSON numbers; send null for a missing value")
    return InputError(f"body: not valid JSON ({exc})")


def non_finite(doc: Any, path: str) -> str | None:
    if isinstance(doc, float):
        return None if math.isfinite(doc) else path
    if isinstance(doc, dict):
        if path.startswith("inputs[") and isinstance(doc.get("name"), str):
            path = f"inputs.{doc['name']}"  # name the tensor, not its position
        items = [(f"{path}.{k}" if path else str(k), v) for k, v in doc.items()]
    elif isinstance(doc, list):
        items = [(f"{path}[{i}]", v) for i, v in enumerate(doc)]
    else:
        return None
    for sub, value in items:
        found = non_finite(value, sub)
        if found is not None:
            return found
    return None
