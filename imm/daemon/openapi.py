"""The OpenAPI 3.0 document, built from the route table so it cannot drift from the code."""

from __future__ import annotations

import re
from typing import Any

from .. import __version__
from .routes import Route

ERROR = {
    "type": "object", "required": ["error"],
    "properties": {"error": {"type": "object", "required": ["code", "message"], "properties": {
        "code": {"type": "string"}, "message": {"type": "string"}, "detail": {}}}},
}


def _link(op: str, **params: str) -> dict[str, Any]:
    return {"operationId": op, "parameters": params}


_BY_DIGEST = "$response.body#/digest"
_SAME_REF = "$request.path.ref"
# OpenAPI links: what a client (or a stateful fuzzer) can do next with what an answer returned.
# Keyed by (method, path); they sit on the operation's success responses.
LINKS: dict[tuple[str, str], dict[str, Any]] = {
    ("POST", "/v1/images"): {
        "ShowImage": _link("get_images_show", ref=_BY_DIGEST),
        "RevokeImage": _link("post_images_revoke", ref=_BY_DIGEST),
        "RestoreImage": _link("post_images_restore", ref=_BY_DIGEST),
        "AddArtifact": _link("post_artifacts_add", ref=_BY_DIGEST),
        "VerifyImage": {"operationId": "get_images_verify",
                        "parameters": {"query.ref": _BY_DIGEST}},
    },
    ("POST", "/v1/images/{ref}/revoke"): {
        "ShowImage": _link("get_images_show", ref=_SAME_REF),
        "RestoreImage": _link("post_images_restore", ref=_SAME_REF),
    },
    ("POST", "/v1/images/{ref}/restore"): {
        "ShowImage": _link("get_images_show", ref=_SAME_REF),
        "RevokeImage": _link("post_images_revoke", ref=_SAME_REF),
    },
    ("POST", "/v1/images/{ref}/artifacts"): {
        "ShowImage": _link("get_images_show", ref=_SAME_REF),
    },
    ("PUT", "/v1/channels/{name}"): {
        "ShowChannel": _link("get_channels_show", name="$request.path.name"),
        "ChannelHistory": _link("get_channels_history", name="$request.path.name"),
    },
    ("POST", "/v1/rollouts"): {
        "ShowRollout": _link("get_rollouts_show", id="$response.body#/id"),
    },
}


def document(routes: list[Route]) -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for r in routes:
        op: dict[str, Any] = {
            "summary": r.summary,
            "operationId": f"{r.method.lower()}_{r.handler.__name__}",
            "tags": [r.tag],
            "responses": {
                "200": {"description": "OK", "content": {
                    "text/plain" if r.path == "/metrics" else "application/json": {
                        "schema": {"type": "string"} if r.path == "/metrics" else
                        {"type": "object"}}}},
                "default": {"description": "Error", "content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/Error"}}}},
            },
        }
        if r.method in ("POST", "PUT", "DELETE"):
            op["responses"]["201"] = {"description": "Created", "content": {
                "application/json": {"schema": {"type": "object"}}}}
            op["responses"]["202"] = {"description": "Protected: a pending change to approve",
                                      "content": {"application/json": {"schema": {
                                          "type": "object"}}}}
            op["responses"]["403"] = {"description": "The peer is not an admin", "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
        links = LINKS.get((r.method, r.path))
        if links:
            for code in ("200", "201"):
                if code in op["responses"]:
                    op["responses"][code]["links"] = links
        params = []
        for name in re.findall(r"{(\w+)}", r.path):
            spec = r.query.get(name, {})
            params.append({"name": name, "in": "path", "required": True,
                           "description": spec.get("description", ""),
                           "schema": spec.get("schema", {"type": "string"})})
        for name, spec in r.query.items():
            if spec.get("in") == "path":
                continue
            params.append({"name": name, "in": "query", "required": bool(spec.get("required")),
                           "schema": spec.get("schema", {"type": "string"})})
        if params:
            op["parameters"] = params
        if r.body is not None:
            op["requestBody"] = {"required": bool(r.body.get("required")), "content": {
                "application/json": {"schema": r.body}}}
        paths.setdefault(r.path, {})[r.method.lower()] = op
    return {
        "openapi": "3.0.3",
        "info": {"title": "immd API", "version": __version__, "description":
                 "The control plane of an immutable fleet. Served on a unix socket; mutating "
                 "calls need an admin peer (SO_PEERCRED)."},
        "paths": paths,
        "components": {"schemas": {"Error": ERROR}},
    }
