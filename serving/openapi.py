"""The OpenAPI 3.1 document of both APIs, with the served model's features spelled out when one is loaded."""

from __future__ import annotations

from typing import Any

from serving.model import OnnxModel
from serving.protocol import FLT_MAX, NUMERIC, OUTPUTS

_REF = "#/components/schemas/"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": _REF + name}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}},
            "headers": {"X-Model-Version": {"$ref": "#/components/headers/X-Model-Version"}}}


def _errors(*codes: int) -> dict[str, Any]:
    text = {400: "Invalid request: the message names the field", 401: "Missing or wrong bearer token",
            404: "Unknown model name or version", 413: "Body over the size limit",
            503: "No model loaded yet"}
    return {str(c): _json(_ref("Error"), text[c]) for c in codes}


def _operation(summary: str, ok: dict[str, Any], errors: tuple[int, ...], body: str | None = None,
               params: tuple[str, ...] = (), tag: str = "Open Inference Protocol v2") -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "tags": [tag], "responses": {"200": ok, **_errors(*errors)}}
    if params:
        op["parameters"] = [{"$ref": f"#/components/parameters/{p}"} for p in params]
    if body:
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": _ref(body)}}}
    return op


def _record(model: OnnxModel | None) -> dict[str, Any]:
    if model is None:
        return {"type": "object", "description": "One value per model feature (GET /openapi.json again once a "
                                                 "model is loaded to see them); null for a missing value.",
                "additionalProperties": {"type": ["number", "string", "null"]}}
    # The FP32 range: a larger number cannot reach the model and is refused (400).
    props = {f.name: {"type": ["number", "null"], "format": "float", "minimum": -FLT_MAX, "maximum": FLT_MAX}
             if f.kind == "numeric"
             else {"type": ["string", "null"]} for f in model.features}
    return {"type": "object", "properties": props, "required": list(props), "additionalProperties": False,
            "description": "One value per feature, all present; null for a missing value (numbers are imputed, "
                           "strings become the unknown category). NaN and Infinity are refused."}


def _schemas(model: OnnxModel | None) -> dict[str, Any]:
    tensor = {"type": "object", "required": ["name", "shape", "datatype"], "properties": {
        "name": {"type": "string", "description": "A feature name, or any other name for one row-major [N, F] "
                                                  "BYTES tensor with the features in model order"},
        "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
        "datatype": {"type": "string", "enum": ["BYTES", *NUMERIC]},
        "data": {"type": "array", "description": "Row-major, flat or nested; null for a missing value"},
        "parameters": {"type": "object", "properties": {"binary_data_size": {"type": "integer"}}}}}
    out_tensor = {"type": "object", "required": ["name", "shape", "datatype"], "properties": {
        "name": {"type": "string", "enum": list(OUTPUTS)}, "shape": {"type": "array", "items": {"type": "integer"}},
        "datatype": {"type": "string"}, "data": {"type": "array"}, "parameters": {"type": "object"}}}
    versioned = {"model_name": {"type": "string"}, "model_version": {"type": "string"}}
    return {
        "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}},
        "Record": _record(model),
        "PredictRequest": {"type": "object", "required": ["records"], "additionalProperties": False, "properties": {
            "records": {"type": "array", "minItems": 1, "items": _ref("Record")},
            "id": {"type": ["string", "null"], "description": "Kept with the rows in the prediction log"}}},
        "PredictResponse": {"type": "object", "properties": {**versioned, "predictions": {
            "type": "array", "items": {"type": "object", "properties": {
                "probability": {"type": "number"}, "label": {"type": "integer", "enum": [0, 1]}}}}}},
        "InferenceRequest": {"type": "object", "required": ["inputs"], "properties": {
            "id": {"type": ["string", "null"]}, "parameters": {"type": "object"},
            "inputs": {"type": "array", "minItems": 1, "items": _ref("RequestInput")},
            "outputs": {"type": "array", "items": {"type": "object", "required": ["name"], "properties": {
                "name": {"type": "string", "enum": list(OUTPUTS)}, "parameters": {"type": "object"}}}}}},
        "RequestInput": tensor,
        "InferenceResponse": {"type": "object", "properties": {
            **versioned, "id": {"type": "string"}, "outputs": {"type": "array", "items": _ref("ResponseOutput")}}},
        "ResponseOutput": out_tensor,
        "ModelMetadata": {"type": "object", "properties": {
            "name": {"type": "string"}, "versions": {"type": "array", "items": {"type": "string"}},
            "platform": {"type": "string"}, "inputs": {"type": "array", "items": _ref("TensorMetadata")},
            "outputs": {"type": "array", "items": _ref("TensorMetadata")}, "parameters": {"type": "object"}}},
        "TensorMetadata": {"type": "object", "properties": {
            "name": {"type": "string"}, "datatype": {"type": "string"},
            "shape": {"type": "array", "items": {"type": "integer"}}}},
        "ServerMetadata": {"type": "object", "properties": {
            "name": {"type": "string"}, "version": {"type": "string"},
            "extensions": {"type": "array", "items": {"type": "string"}}}},
        "Live": {"type": "object", "properties": {"live": {"type": "boolean"}}},
        "Ready": {"type": "object", "properties": {"ready": {"type": "boolean"},
                                                   "model_version": {"type": ["string", "null"]}}},
        "ModelReady": {"type": "object", "properties": {"name": {"type": "string"}, "ready": {"type": "boolean"},
                                                        "model_version": {"type": "string"}}},
    }


def document(model: OnnxModel | None, auth: bool, server_version: str) -> dict[str, Any]:
    """OpenAPI 3.1: the plain JSON /predict, the OIP v2 REST routes, health and metrics."""
    meta_ok = _json(_ref("ModelMetadata"), "Model metadata")
    ready_ok = _json(_ref("ModelReady"), "The model is ready")
    infer = _operation("Inference (one tensor per feature, or one row-major [N, F] BYTES tensor; the binary "
                       "tensor data extension is accepted)", _json(_ref("InferenceResponse"), "Outputs"),
                       (400, 401, 404, 413, 503), body="InferenceRequest", params=("name",))
    infer_v = {**infer, "parameters": infer["parameters"] + [{"$ref": "#/components/parameters/version"}]}
    paths: dict[str, Any] = {
        "/predict": {"post": _operation("Probabilities and labels for plain JSON records",
                                        _json(_ref("PredictResponse"), "One prediction per record, in order"),
                                        (400, 401, 413, 503), body="PredictRequest", tag="Plain JSON")},
        "/v2/health/live": {"get": {**_operation("Liveness (no auth)", _json(_ref("Live"), "The process works"),
                                                 ()), "security": []}},
        "/v2/health/ready": {"get": _operation("Readiness: a model is loaded", _json(_ref("Ready"), "Ready"),
                                               (401, 503))},
        "/v2": {"get": _operation("Server metadata", _json(_ref("ServerMetadata"), "Server metadata"), (401,))},
        "/v2/models/{name}": {"get": _operation("Model metadata", meta_ok, (401, 404, 503), params=("name",))},
        "/v2/models/{name}/ready": {"get": _operation("Model readiness", ready_ok, (401, 404, 503),
                                                      params=("name",))},
        "/v2/models/{name}/infer": {"post": infer},
        "/v2/models/{name}/versions/{version}": {"get": _operation("Model metadata of a version", meta_ok,
                                                                   (401, 404, 503), params=("name", "version"))},
        "/v2/models/{name}/versions/{version}/ready": {"get": _operation("Readiness of a version", ready_ok,
                                                                         (401, 404, 503),
                                                                         params=("name", "version"))},
        "/v2/models/{name}/versions/{version}/infer": {"post": infer_v},
        "/metrics": {"get": {"summary": "Prometheus metrics", "tags": ["Operations"], "responses": {"200": {
            "description": "Text exposition format 0.0.4", "content": {"text/plain": {"schema": {"type": "string"}}}},
            **_errors(401)}}},
        "/openapi.json": {"get": {"summary": "This document", "tags": ["Operations"], "responses": {"200": {
            "description": "OpenAPI 3.1", "content": {"application/json": {"schema": {"type": "object"}}}}}}},
    }
    doc: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {"title": "flights-mlops model server", "version": server_version,
                 "description": "Serves the registry's champion with onnxruntime. Every response carries the "
                                "model version in the X-Model-Version header; prediction bodies carry it too."
                                + (f" Serving {model.name} v{model.version}." if model else "")},
        "paths": paths,
        "components": {
            "schemas": _schemas(model),
            "parameters": {
                "name": {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}},
                "version": {"name": "version", "in": "path", "required": True, "schema": {"type": "string"}}},
            "headers": {"X-Model-Version": {"description": "The model version that answered",
                                            "schema": {"type": "string"}}},
        },
    }
    if auth:
        doc["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
        doc["security"] = [{"bearer": []}]
    return doc
