"""The OpenAPI 3.1 document, generated from the endpoints' declared types (msgspec schemas)."""

from __future__ import annotations

import re
from typing import Any

import msgspec

from shoal.web.api import Endpoint, openapi_path
from shoal.web.errors import Envelope

REF = "#/components/schemas/{name}"


# Starlette's path convertors, as the schema of what they match ({seq:int} is digits only)
_PATH_PARAM = re.compile(r"{([a-zA-Z_][a-zA-Z0-9_]*)(?::([a-z]+))?}")
_CONVERTOR = {
    "int": {"type": "integer", "minimum": 0, "maximum": 2**63 - 1},
    "float": {"type": "number", "minimum": 0},
}

INT64 = (-(2**63), 2**63 - 1)  # what the servers' JSON (orjson, msgspec) holds in an integer


def _bounded(node: Any) -> Any:
    """Every integer schema gets the 64-bit bounds the servers decode (unless it states its own)."""
    if isinstance(node, dict):
        if node.get("type") == "integer":
            node.setdefault("minimum", INT64[0])
            node.setdefault("maximum", INT64[1])
        for value in node.values():
            _bounded(value)
    elif isinstance(node, list):
        for value in node:
            _bounded(value)
    return node


def _schema_for(typ: Any, components: dict) -> dict:
    (schema,), comps = msgspec.json.schema_components([typ], ref_template=REF)
    components.update(_bounded(comps))
    return _bounded(schema)


def _query_parameters(typ: Any, components: dict) -> list[dict]:
    schema = _schema_for(typ, components)
    if "$ref" in schema:
        schema = components[schema["$ref"].rsplit("/", 1)[1]]
    required = set(schema.get("required", []))
    return [
        {"name": name, "in": "query", "required": name in required, "schema": prop}
        for name, prop in schema.get("properties", {}).items()
    ]


def build_openapi(
    title: str, version: str, endpoints: list[Endpoint], envelope: Envelope, description: str = ""
) -> dict:
    components: dict[str, Any] = {"Error": envelope.schema}
    paths: dict[str, dict] = {}
    for ep in endpoints:
        op: dict[str, Any] = {
            "summary": ep.doc,
            "operationId": f"{ep.method.lower()}_{openapi_path(ep.path).strip('/').replace('/', '_').replace('{', '').replace('}', '') or 'root'}",
            "responses": {},
        }
        if ep.description:
            op["description"] = ep.description
        if ep.tags:
            op["tags"] = ep.tags
        params = [
            {
                "name": name,
                "in": "path",
                "required": True,
                "schema": {**_CONVERTOR.get(convertor, {"type": "string"}), **ep.path_schema.get(name, {})},
            }
            for name, convertor in _PATH_PARAM.findall(ep.path)
        ]
        if ep.query is not None:
            params += _query_parameters(ep.query, components)
        if params:
            op["parameters"] = params
        if ep.body is not None:
            op["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": _schema_for(ep.body, components)}},
            }
        elif ep.request_media_type:
            op["requestBody"] = {"required": True, "content": {ep.request_media_type: {"schema": {}}}}
        if ep.media_type == "application/json":
            ok_schema = _schema_for(ep.response, components) if ep.response is not None else {}
            op["responses"][str(ep.status)] = {
                "description": "success",
                "content": {"application/json": {"schema": ok_schema}},
            }
        else:
            op["responses"][str(ep.status)] = {
                "description": "success",
                "content": {ep.media_type: {"schema": {}}},
            }
        for status, text in ep.extra_responses.items():
            op["responses"].setdefault(str(status), {"description": text})
        error = {"content": {"application/json": {"schema": {"$ref": REF.format(name="Error")}}}}
        op["responses"]["4XX"] = {"description": "client error", **error}
        op["responses"]["5XX"] = {"description": "server error", **error}
        op.update(ep.openapi_extra)
        paths.setdefault(openapi_path(ep.path), {})[ep.method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version, "description": description},
        "paths": paths,
        "components": {"schemas": components},
    }
