"""The JSON API's contract, declared once next to each handler.

``@endpoint(...)`` records the method, path, request model, query model and response model of an
API handler, and wraps it so that the body and query are validated by those same pydantic models
before the handler runs. ``document()`` builds ``/api/openapi.json`` from the same records, so the
document cannot drift from what the server really accepts and returns (schemathesis checks it).
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Optional

from aiohttp import web
from pydantic import BaseModel, TypeAdapter, ValidationError

from groom.core.errors import AppError

MAX_JSON_BYTES = 64 * 1024

ApiHandler = Callable[..., Awaitable[Any]]


class ErrorBody(BaseModel):
    code: str
    message: str
    details: Optional[dict[str, Any]] = None


class ErrorResponse(BaseModel):
    error: ErrorBody


@dataclass
class Endpoint:
    method: str
    path: str
    handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    summary: str
    tag: str
    body: Optional[type[BaseModel]] = None
    query: Optional[type[BaseModel]] = None
    response: Any = None  # a pydantic model, list[Model], or None for 204
    status: int = 200
    auth: bool = True
    errors: tuple[int, ...] = ()
    raw_body: Optional[str] = None  # e.g. "text/csv": handler reads the body itself
    raw_response: Optional[str] = None  # e.g. "text/calendar"


ENDPOINTS: list[Endpoint] = []


def _validation_error(exc: ValidationError) -> AppError:
    problems = [{"field": ".".join(str(p) for p in err["loc"]), "problem": err["msg"]}
                for err in exc.errors(include_url=False, include_input=False)]
    return AppError("invalid", "The request is not valid: {summary}", status=422,
                    summary="; ".join(f"{p['field'] or 'body'}: {p['problem']}" for p in problems))


async def read_body(request: web.Request, limit: int) -> bytes:
    """At most ``limit + 1`` bytes of the body (one more than allowed tells "too large").
    ``content.read(n)`` returns what has arrived so far, so loop until EOF or over the limit."""
    raw = bytearray()
    while len(raw) <= limit:
        chunk = await request.content.read(limit + 1 - len(raw))
        if not chunk:
            break
        raw += chunk
    return bytes(raw)


async def read_json(request: web.Request, model: type[BaseModel]) -> BaseModel:
    if request.content_type != "application/json":
        raise AppError("unsupported_media_type", "Send JSON (Content-Type: application/json).",
                       status=415)
    raw = await read_body(request, MAX_JSON_BYTES)
    if len(raw) > MAX_JSON_BYTES:
        raise AppError("too_large", "The request body is too large.", status=413)
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise AppError("malformed_json", "The body is not valid JSON.", status=400) from None
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise _validation_error(exc) from None


def parse_query(request: web.Request, model: type[BaseModel]) -> BaseModel:
    try:
        return model.model_validate(dict(request.query))
    except ValidationError as exc:
        raise _validation_error(exc) from None


def _dump(response_model: Any, value: Any) -> Any:
    return TypeAdapter(response_model).dump_python(value, mode="json")


def endpoint(method: str, path: str, *, summary: str, tag: str,
             body: Optional[type[BaseModel]] = None, query: Optional[type[BaseModel]] = None,
             response: Any = None, status: int = 200, auth: bool = True,
             errors: tuple[int, ...] = (), raw_body: Optional[str] = None,
             raw_response: Optional[str] = None) -> Callable[[ApiHandler], ApiHandler]:
    """Register an API handler. It is called as ``handler(request, [body], [query])`` and returns
    the response value (validated against ``response``), or a ready ``web.StreamResponse``."""

    def wrap(fn: ApiHandler) -> ApiHandler:
        @functools.wraps(fn)
        async def handler(request: web.Request) -> web.StreamResponse:
            args: list[Any] = [request]
            if body is not None:
                args.append(await read_json(request, body))
            if query is not None:
                args.append(parse_query(request, query))
            result = await fn(*args)
            if isinstance(result, web.StreamResponse):
                return result
            if response is None:
                return web.Response(status=204)
            return web.json_response(_dump(response, result), status=status)

        ENDPOINTS.append(Endpoint(method, path, handler, summary, tag, body, query, response,
                                  status, auth, errors, raw_body, raw_response))
        return fn

    return wrap


def add_api_routes(app: web.Application) -> None:
    for ep in ENDPOINTS:
        app.router.add_route(ep.method, ep.path, ep.handler)


# --- the document --------------------------------------------------------------------------

def _schema_ref(model: Any, schemas: dict[str, Any]) -> dict[str, Any]:
    """JSON Schema for ``model`` with its nested models moved to ``components/schemas``."""
    schema = TypeAdapter(model).json_schema(ref_template="#/components/schemas/{model}",
                                            mode="serialization")
    for name, sub in schema.pop("$defs", {}).items():
        schemas[name] = sub
    if isinstance(model, type) and issubclass(model, BaseModel):
        schemas[model.__name__] = schema
        return {"$ref": f"#/components/schemas/{model.__name__}"}
    return schema


def _input_schema(model: type[BaseModel], schemas: dict[str, Any]) -> dict[str, Any]:
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}",
                                     mode="validation")
    for name, sub in schema.pop("$defs", {}).items():
        schemas[name] = sub
    schemas[model.__name__ + "Input"] = schema
    return {"$ref": f"#/components/schemas/{model.__name__}Input"}


def _query_parameters(model: type[BaseModel]) -> list[dict[str, Any]]:
    params = []
    schema = model.model_json_schema()
    required = set(schema.get("required", []))
    for name, prop in schema.get("properties", {}).items():
        params.append({"name": name, "in": "query", "required": name in required,
                       "schema": prop})
    return params


ERROR_TEXT = {400: "Malformed request", 401: "Not logged in", 403: "Not allowed (or bad CSRF token)",
              404: "Unknown or another school's id", 409: "Conflict (e.g. a clash)",
              413: "Too large", 415: "Wrong content type", 422: "Invalid values",
              429: "Too many attempts"}


def document() -> dict[str, Any]:
    schemas: dict[str, Any] = {}
    paths: dict[str, Any] = {}
    error_ref = _schema_ref(ErrorResponse, schemas)
    for ep in ENDPOINTS:
        op: dict[str, Any] = {"summary": ep.summary, "tags": [ep.tag],
                              "operationId": ep.handler.__name__}
        params = [{"name": name, "in": "path", "required": True,
                   "schema": {"type": "integer", "minimum": 1}}
                  for name in re.findall(r"{(\w+)}", ep.path)]
        if ep.query is not None:
            params += _query_parameters(ep.query)
        if params:
            op["parameters"] = params
        if ep.body is not None:
            op["requestBody"] = {"required": True, "content": {
                "application/json": {"schema": _input_schema(ep.body, schemas)}}}
        elif ep.raw_body:
            op["requestBody"] = {"required": True, "content": {
                ep.raw_body: {"schema": {"type": "string"}}}}
        responses: dict[str, Any] = {}
        if ep.raw_response:
            responses[str(ep.status)] = {"description": "OK", "content": {
                ep.raw_response: {"schema": {"type": "string"}}}}
        elif ep.response is None:
            responses[str(ep.status)] = {"description": "Done"}
        else:
            responses[str(ep.status)] = {"description": "OK", "content": {
                "application/json": {"schema": _schema_ref(ep.response, schemas)}}}
        codes = set(ep.errors)
        if ep.auth:
            codes |= {401, 403}
        if ep.body is not None:
            codes |= {400, 413, 415, 422}
        if ep.query is not None or "{" in ep.path:
            codes |= {404, 422}
        for code in sorted(codes):
            responses[str(code)] = {"description": ERROR_TEXT.get(code, "Error"),
                                    "content": {"application/json": {"schema": error_ref}}}
        op["responses"] = responses
        if ep.auth:
            op["security"] = [{"session": []}]
        paths.setdefault(ep.path, {})[ep.method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {"title": "G-Room API", "version": "1"},
        "paths": paths,
        "components": {"schemas": schemas, "securitySchemes": {
            "session": {"type": "apiKey", "in": "cookie", "name": "groom_session",
                        "description": "Log in with POST /api/login; unsafe requests also need "
                                       "the X-CSRF-Token header from the login answer."}}},
    }

