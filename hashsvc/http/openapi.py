"""GET /openapi.json, generated from the route table (so it describes every
route there is), and /docs: the same as a plain HTML page, rendered on the
server (no script, no CDN: servers often have no internet)."""

from __future__ import annotations

import html

from hashsvc.core.auth import RPC_ROLES
from hashsvc.http.calls import Endpoint
from hashsvc.http.errors import HTTP_STATUS

ERROR_SCHEMA = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {
                "code": {
                    "type": "string",
                    "enum": sorted({*HTTP_STATUS, "CANCELLED", "UNIMPLEMENTED"}),
                },
                "message": {"type": "string"},
                "field": {"type": "string", "description": "the request field at fault"},
                "limit": {"type": "string", "description": "the config key of a limit"},
            },
        }
    },
}
_ERRORS = {
    "400": "bad input (INVALID_ARGUMENT)",
    "401": "missing, unknown, revoked or expired token (UNAUTHENTICATED)",
    "403": "the token's role may not call this (PERMISSION_DENIED)",
    "404": "no such set, entry, item or route (NOT_FOUND)",
    "409": "exists already, or not in the state asked for (ALREADY_EXISTS, FAILED_PRECONDITION)",
    "413": "the request is larger than a limit (RESOURCE_EXHAUSTED)",
    "429": "past the token's rate limit or the spool's room (RESOURCE_EXHAUSTED)",
    "503": "the index is not loaded or not current: no decision (UNAVAILABLE)",
}
_MEDIA_BODY = {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}


def openapi(endpoints: list[Endpoint], prefix: str = "/hashsvc.v1.") -> dict:
    paths: dict[str, dict] = {}
    for ep in endpoints:
        roles = sorted(RPC_ROLES[f"{prefix}{ep.rpc}"])
        path = ep.path.replace(":path}", "}")
        operation = {
            "operationId": f"{ep.method.lower()}_{_slug(path)}",
            "summary": ep.summary,
            "description": f"Roles: {', '.join(roles)} (as the gRPC {ep.rpc}).",
            "tags": [ep.path.split("/")[2]],
            "parameters": [
                {
                    "name": p.name,
                    "in": p.where,
                    "required": p.required or p.where == "path",
                    "description": p.description,
                    "schema": (
                        {"type": "array", "items": {"type": "string"}}
                        if p.kind == "array"
                        else {"type": p.kind}
                    ),
                }
                for p in ep.params
            ],
            "responses": {
                str(ep.ok_status): _success(ep),
                **{
                    code: {
                        "description": what,
                        "content": {"application/json": {"schema": ERROR_SCHEMA}},
                    }
                    for code, what in _ERRORS.items()
                },
            },
        }
        body = _request_body(ep)
        if body:
            operation["requestBody"] = body
        paths.setdefault(path, {})[ep.method.lower()] = operation
    for path, what in (("/healthz", "alive"), ("/readyz", "ready: the index is loaded")):
        paths[path] = {
            "get": {
                "operationId": path.strip("/"),
                "summary": f"200 when {what} (no token)",
                "security": [],
                "responses": {
                    "200": {"description": what},
                    "503": {"description": "not ready", "content": {
                        "application/json": {"schema": ERROR_SCHEMA}}},
                },
            }
        }  # fmt: skip
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "hashsvc HTTP/JSON API",
            "version": "1",
            "description": "The gRPC API's capabilities over HTTP: the same roles, tokens,"
            " limits and history. Send `Authorization: Bearer <token>`.",
        },
        "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        "security": [{"bearer": []}],
        "paths": paths,
    }


def _slug(path: str) -> str:
    return "_".join(p.strip("{}") for p in path.strip("/").split("/"))


def _success(ep: Endpoint) -> dict:
    if ep.answers == "jsonl":
        content = {"application/x-ndjson": {"schema": {"type": "string"}}}
    elif ep.answers == "file":
        content = {"application/x-ndjson": {"schema": {"type": "string"}},
                   "text/csv": {"schema": {"type": "string"}}}  # fmt: skip
    else:
        content = {"application/json": {"schema": {"type": "object"}}}
    return {"description": "OK", "content": content}


def _request_body(ep: Endpoint) -> dict | None:
    if not ep.body:
        return None
    content = {}
    if ep.body in ("media", "match"):
        content.update(_MEDIA_BODY)
        content["multipart/form-data"] = {
            "schema": {
                "type": "object",
                "properties": {"file": {"type": "string", "format": "binary"}},
                "required": ["file"],
            }
        }
    if ep.body_schema is not None:
        content["application/json"] = {"schema": ep.body_schema}
    return {"required": ep.body != "media" or ep.body_schema is None, "content": content}


def docs_html(spec: dict) -> str:
    """The spec as one static page."""
    e = html.escape
    rows = []
    for path, operations in spec["paths"].items():
        for method, op in operations.items():
            params = ", ".join(f"{e(p['name'])} ({e(p['in'])})" for p in op.get("parameters", []))
            body = ", ".join(e(k) for k in op.get("requestBody", {}).get("content", {}))
            rows.append(
                f"<tr><td><code>{e(method.upper())}</code></td><td><code>{e(path)}</code></td>"
                f"<td>{e(op['summary'])}<br><small>{e(op.get('description', ''))}</small></td>"
                f"<td>{params}</td><td>{body}</td></tr>"
            )
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>hashsvc HTTP API</title>"
        "<style>body{font-family:sans-serif;margin:2em}td,th{border-bottom:1px solid #ccc;"
        "padding:.4em;vertical-align:top;text-align:left}table{border-collapse:collapse}"
        "</style></head><body>"
        f"<h1>{e(spec['info']['title'])}</h1><p>{e(spec['info']['description'])}</p>"
        '<p>Errors: <code>{"error": {"code": "INVALID_ARGUMENT", "message": "..."}}'
        "</code>. The machine-readable description: <a href='/openapi.json'>/openapi.json</a>."
        "</p><table><tr><th>method</th><th>path</th><th>what</th><th>parameters</th>"
        f"<th>body</th></tr>{''.join(rows)}</table></body></html>"
    )
