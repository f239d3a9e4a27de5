"""Wire formats for one model: plain-JSON records and Open Inference Protocol v2 tensors in, answers out.

Every form becomes the same thing: one sequence per model feature, in the model's order (None or NaN
for a missing numeric). Validation happens here, per request, so a bad request fails alone with a
message naming its field, and a micro-batch only ever holds valid rows. OIP inputs come as one tensor
per feature, or as one row-major [N, F] tensor, in JSON or in the binary tensor extension (the default
of Triton's Python client).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from itertools import chain
from typing import Annotated, Any

import msgspec
import numpy as np

from serving import binary, messages
from serving.binary import NUMERIC
from serving.model import Feature, InputError, OnnxModel

FLT_MAX = float(np.finfo(np.float32).max)
F32 = Annotated[float, msgspec.Meta(ge=-FLT_MAX, le=FLT_MAX)]  # what an FP32 input can hold: no inf, no NaN
I64 = Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)]
OUTPUTS = {"probability": "FP32", "label": "INT64"}
_JSON_ELEMENT: dict[str, Any] = {"float": F32 | None, "int": I64 | None, "BYTES": str | None}
_encode = msgspec.json.Encoder().encode
Values = Sequence[Any] | np.ndarray  # one feature's values: a list from JSON, an array from binary data
Payload = msgspec.Raw | memoryview  # a tensor's data: its JSON `data`, or its bytes of the binary part


class Rows(msgspec.Struct):
    """One request's validated input: row tuples, or one sequence per feature (both in model feature order).
    A Struct, made per request: its __init__ is C (a dataclass's is Python)."""

    count: int
    records: list[tuple[Any, ...]] | None = None
    columns: list[Values] | None = None

    def feature_columns(self) -> list[Values]:
        if self.columns is None:
            self.columns = list(zip(*self.records or [], strict=True))
        return self.columns


class _Tensor(msgspec.Struct):
    name: str
    shape: list[int]
    datatype: str
    data: msgspec.Raw = msgspec.field(default_factory=msgspec.Raw)  # empty: absent (binary data)
    parameters: dict[str, Any] | None = None


class _RequestedOutput(msgspec.Struct):
    name: str
    parameters: dict[str, Any] | None = None


class _InferBody(msgspec.Struct):
    inputs: list[_Tensor]
    id: str | None = None
    outputs: list[_RequestedOutput] | None = None
    parameters: dict[str, Any] | None = None


class InferRequest(msgspec.Struct):
    id: str | None
    rows: Rows
    outputs: list[tuple[str, bool]]  # (output name, as binary data)


class Protocol:
    """Decoders and encoders built once per model version from its feature schema."""

    def __init__(self, model: OnnxModel) -> None:
        self.model = model
        self.features = model.features
        self.index = {f.name: i for i, f in enumerate(self.features)}
        fields = [(f"f{i}", F32 | None if f.kind == "numeric" else str | None, msgspec.field(name=f.name))
                  for i, f in enumerate(self.features)]
        # gc=False: scalars only, no cycles possible; untracked objects decode ~40% faster.
        record = msgspec.defstruct("Record", fields, forbid_unknown_fields=True, gc=False)
        body = msgspec.defstruct("PredictBody", [("records", list[record]), ("id", str | None, None)],  # type: ignore[valid-type]
                                 forbid_unknown_fields=True, gc=False)
        self._records = msgspec.json.Decoder(body)
        self._infer = msgspec.json.Decoder(_InferBody)
        cell = tuple(F32 | str | None if f.kind == "numeric" else str | None for f in self.features)
        self._rows_nested = msgspec.json.Decoder(list[tuple[cell]])  # type: ignore[valid-type]
        self._rows_flat = msgspec.json.Decoder(list[F32 | str | None])
        self._columns = {(kind, nested): msgspec.json.Decoder(list[list[t]] if nested else list[t])  # type: ignore[valid-type]
                         for kind, t in _JSON_ELEMENT.items() for nested in (False, True)}
        self._predict_head = _encode({"model_name": model.name, "model_version": model.version})[:-1]

    # --- plain JSON: {"records": [{feature: value, ...}, ...]} -----------------------------------------

    def records(self, body: bytes) -> tuple[Rows, str | None]:
        try:
            req: Any = self._records.decode(body)
        except msgspec.ValidationError as exc:
            raise InputError(self._explain(exc, 'expected {"records": [{feature: value, ...}, ...]}')) from None
        except msgspec.DecodeError as exc:
            raise messages.malformed(body, exc) from None
        except UnicodeDecodeError:
            raise messages.not_utf8("body", body) from None
        if not req.records:
            raise InputError("records: at least one record is required")
        return Rows(len(req.records), records=list(map(msgspec.structs.astuple, req.records))), req.id

    def predict_response(self, probs: np.ndarray) -> bytes:
        threshold = self.model.threshold
        if len(probs) == 1:  # the common case, joined directly (bytes %-formatting costs more)
            p = float(probs[0])
            return b"".join((self._predict_head, b',"predictions":[{"probability":', _encode(p),
                             b',"label":1}]}' if p >= threshold else b',"label":0}]}'))
        preds = [{"probability": p, "label": int(p >= threshold)} for p in probs.tolist()]
        return self._predict_head + b',"predictions":' + _encode(preds) + b"}"

    # --- OIP v2 infer ------------------------------------------------------------------------------------

    def infer(self, body: bytes, header_length: int | None = None) -> InferRequest:
        """An OIP v2 inference request; `header_length` is set for the binary tensor data extension."""
        head, binary = body, memoryview(b"")
        if header_length is not None:
            if not 0 < header_length <= len(body):
                raise InputError(f"Inference-Header-Content-Length: {header_length} does not fit a body of "
                                 f"{len(body)} bytes")
            # The tensors' bytes stay in the body: views, not copies (a 1000-row request carries ~64 KB).
            head, binary = body[:header_length], memoryview(body)[header_length:]
        try:
            req = self._infer.decode(head)
        except msgspec.ValidationError as exc:
            raise InputError(self._explain(exc, 'expected {"inputs": [{"name", "shape", "datatype", "data"}]}')) \
                from None
        except msgspec.DecodeError as exc:
            raise messages.malformed(head, exc) from None
        except UnicodeDecodeError:
            raise messages.not_utf8("body", head) from None
        if not req.inputs:
            raise InputError("inputs: at least one input tensor is required")
        payloads = _payloads(req.inputs, binary)
        if len(req.inputs) == 1 and req.inputs[0].name not in self.index:
            rows = self._row_major(req.inputs[0], payloads[0])
        else:
            rows = self._per_feature(req.inputs, payloads)
        return InferRequest(req.id, rows, self._outputs(req))

    def infer_response(self, req: InferRequest, probs: np.ndarray) -> tuple[bytes, int | None]:
        """The body, and the JSON header's length when binary outputs follow it."""
        values = {"probability": probs, "label": (probs >= self.model.threshold).astype(np.int64)}
        outputs, blobs = [], []
        for name, as_binary in req.outputs:
            out: dict[str, Any] = {"name": name, "datatype": OUTPUTS[name], "shape": [len(probs)]}
            if as_binary:
                blob = values[name].astype(NUMERIC[OUTPUTS[name]]).tobytes()
                out["parameters"] = {"binary_data_size": len(blob)}
                blobs.append(blob)
            else:
                out["data"] = values[name].tolist()
            outputs.append(out)
        reply: dict[str, Any] = {"model_name": self.model.name, "model_version": self.model.version}
        if req.id is not None:
            reply["id"] = req.id
        reply["outputs"] = outputs
        head = _encode(reply)
        return (head + b"".join(blobs), len(head)) if blobs else (head, None)

    def _per_feature(self, tensors: list[_Tensor], payloads: list[Payload]) -> Rows:
        given: dict[str, tuple[_Tensor, Payload]] = {}
        for t, p in zip(tensors, payloads, strict=True):
            if t.name not in self.index:
                raise InputError(f"inputs.{t.name}: not an input of this model (inputs: "
                                 f"{', '.join(self.index)}; or one row-major [N, {len(self.index)}] tensor)")
            if t.name in given:
                raise InputError(f"inputs.{t.name}: given twice")
            given[t.name] = (t, p)
        missing = [n for n in self.index if n not in given]
        if missing:
            raise InputError(f"inputs: missing tensor{'s' if len(missing) > 1 else ''} "
                             f"{', '.join(f'`{m}`' for m in missing)}")
        columns = [self._feature_column(f, *given[f.name]) for f in self.features]
        count = len(columns[0])
        for f, col in zip(self.features, columns, strict=True):
            if len(col) != count:
                raise InputError(f"inputs.{f.name}: {len(col)} rows, but inputs.{self.features[0].name} has {count}")
        if count == 0:
            raise InputError("inputs: at least one row is required")
        return Rows(count, columns=columns)

    def _feature_column(self, f: Feature, t: _Tensor, payload: Payload) -> Values:
        where = f"inputs.{t.name}"
        if f.kind == "categorical" and t.datatype != "BYTES":
            raise InputError(f"{where}: datatype {t.datatype}, but `{f.name}` is categorical: send BYTES")
        if f.kind == "numeric" and t.datatype not in NUMERIC:
            raise InputError(f"{where}: datatype {t.datatype}, but `{f.name}` is numeric: send FP32, FP64 or INT64")
        if len(t.shape) not in (1, 2) or (len(t.shape) == 2 and t.shape[1] != 1) or t.shape[0] < 0:
            raise InputError(f"{where}: shape {t.shape}, expected [N] or [N, 1]")
        count = t.shape[0]
        if isinstance(payload, memoryview):
            values: Values = (binary.strings(payload, count, where) if t.datatype == "BYTES"
                              else binary.numbers(payload, t.datatype, count, where))
        else:
            values = self._json_column(payload, t.datatype, where)
        if len(values) != count:
            raise InputError(f"{where}: shape {t.shape} says {count} values, data has {len(values)}")
        return values

    def _json_column(self, raw: msgspec.Raw, datatype: str, where: str) -> list[Any]:
        kind = "BYTES" if datatype == "BYTES" else "float" if datatype.startswith("FP") else "int"
        nested = _is_nested(raw)
        try:
            values = self._columns[(kind, nested)].decode(raw)
        except msgspec.ValidationError as exc:
            raise InputError(f"{where}.data{messages.path_and_message(exc, datatype)}") from None
        except UnicodeDecodeError:  # `data` was skipped over, not checked, when the body was decoded
            raise messages.not_utf8(f"{where}.data", raw) from None
        return list(chain.from_iterable(values)) if nested else values

    def _row_major(self, t: _Tensor, payload: Payload) -> Rows:
        where, width = f"inputs.{t.name}", len(self.features)
        if len(t.shape) != 2 or t.shape[1] != width or t.shape[0] < 1:
            raise InputError(f"{where}: not an input of this model; one row-major tensor must have shape "
                             f"[N, {width}], columns {', '.join(self.index)}")
        numeric_only = all(f.kind == "numeric" for f in self.features)
        if t.datatype != "BYTES" and not (numeric_only and t.datatype in NUMERIC):
            raise InputError(f"{where}: datatype {t.datatype}; a row-major tensor of mixed features is BYTES")
        count = t.shape[0]
        if isinstance(payload, memoryview):
            flat: list[Any] = list(binary.strings(payload, count * width, where) if t.datatype == "BYTES"
                                   else binary.numbers(payload, t.datatype, count * width, where))
            columns: list[Any] = [flat[i::width] for i in range(width)]
        elif _is_nested(payload):
            try:
                columns = list(zip(*self._rows_nested.decode(payload), strict=True))
            except msgspec.ValidationError as exc:
                raise InputError(f"{where}.data{self._row_major_path(exc)}") from None
            except UnicodeDecodeError:
                raise messages.not_utf8(f"{where}.data", payload) from None
        else:
            try:
                flat = self._rows_flat.decode(payload)
            except msgspec.ValidationError as exc:
                raise InputError(f"{where}.data{messages.path_and_message(exc, t.datatype)}") from None
            except UnicodeDecodeError:
                raise messages.not_utf8(f"{where}.data", payload) from None
            if len(flat) != count * width:
                raise InputError(f"{where}: shape {t.shape} says {count * width} values, data has {len(flat)}")
            columns = [flat[i::width] for i in range(width)]
        if not columns or len(columns[0]) != count:
            raise InputError(f"{where}: shape {t.shape} says {count} rows, data has "
                             f"{len(columns[0]) if columns else 0}")
        return Rows(count, columns=[_cells(f, i, col, where)
                                    for i, (f, col) in enumerate(zip(self.features, columns, strict=True))])

    def _row_major_path(self, exc: msgspec.ValidationError) -> str:
        message, path = messages.split(exc)
        m = re.match(r"\[(\d+)\]\[(\d+)\]", path)
        if m and int(m.group(2)) < len(self.features):
            return f"[{m.group(1)}][{m.group(2)}] (`{self.features[int(m.group(2))].name}`): {message}"
        return f"{path}: {message}"

    def _outputs(self, req: _InferBody) -> list[tuple[str, bool]]:
        binary = bool((req.parameters or {}).get("binary_data_output", False))
        if not req.outputs:  # absent or empty: every output (some clients always send the field)
            return [(name, binary) for name in OUTPUTS]
        seen: set[str] = set()
        for o in req.outputs:
            if o.name not in OUTPUTS:
                raise InputError(f"outputs.{o.name}: not an output of this model (outputs: {', '.join(OUTPUTS)})")
            if o.name in seen:
                raise InputError(f"outputs.{o.name}: requested twice")
            seen.add(o.name)
        return [(o.name, bool((o.parameters or {}).get("binary_data", binary))) for o in req.outputs]

    def _explain(self, exc: msgspec.ValidationError, expected: str) -> str:
        message, path = messages.split(exc)
        if not path:
            return f"body: {message}; {expected}"
        field = re.search(r"field `(.+)`$", message)
        if field and path.startswith("records[") and message.startswith("object missing required field"):
            return f"{path}: missing feature `{field.group(1)}` (features: {', '.join(self.index)})"
        if field and path.startswith("records[") and message.startswith("object contains unknown field"):
            return f"{path}: unknown feature `{field.group(1)}` (features: {', '.join(self.index)})"
        return f"{path}: {message}"


def _is_nested(raw: msgspec.Raw) -> bool:
    head = bytes(memoryview(raw)[:64]).lstrip()
    return head[:1] == b"[" and head[1:].lstrip()[:1] == b"["


def _payloads(tensors: list[_Tensor], binary: memoryview) -> list[Payload]:
    """Each tensor's data: its JSON `data`, or its slice of the binary part (binary tensor extension)."""
    out: list[Payload] = []
    offset = 0
    for t in tensors:
        size = (t.parameters or {}).get("binary_data_size")
        if size is None:
            if not len(t.data):
                raise InputError(f"inputs.{t.name}: no `data` (and no binary_data_size)")
            out.append(t.data)
            continue
        if type(size) is not int or size < 0 or offset + size > len(binary):
            raise InputError(f"inputs.{t.name}: binary_data_size {size!r} does not fit the "
                             f"{len(binary) - offset} binary bytes left")
        out.append(binary[offset:offset + size])
        offset += size
    if offset != len(binary):
        raise InputError(f"body: {len(binary) - offset} bytes of binary data belong to no input")
    return out


def _cells(f: Feature, index: int, column: Values, where: str) -> Values:
    """One feature's column of a row-major tensor: numbers may come as text in a BYTES tensor."""
    if isinstance(column, np.ndarray):
        return column
    if f.kind == "categorical":
        for r, v in enumerate(column):
            if v is not None and type(v) is not str:
                raise InputError(f"{where}.data[{r}][{index}] (`{f.name}`): expected a string, got {type(v).__name__}")
        return column
    if not any(type(v) is str for v in column):
        return column
    return [_number_text(v, f"{where}.data[{r}][{index}] (`{f.name}`)") if type(v) is str else v
            for r, v in enumerate(column)]


def _number_text(text: str, where: str) -> float | None:
    if not text.strip():
        return None
    try:
        value = float(text)
    except ValueError:
        raise InputError(f"{where}: {text[:40]!r} is not a number") from None
    if not math.isfinite(value) or abs(value) > FLT_MAX:
        raise InputError(f"{where}: {text[:40]!r} is not a finite FP32 number")
    return value


