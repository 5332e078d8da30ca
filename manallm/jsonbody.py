"""The one JSON body parser, with one set of limits, for every body the gateway reads:
the OpenAI endpoints (``routing.schema.parse_json``) and the management API (DRF's
``JSONBodyParser`` below). docs/architecture.md#the-error-taxonomy.

Two limits:

- size: ``MAX_REQUEST_BYTES``. The handler stops keeping a body past it (with or without
  Content-Length, chunked included: ``manallm.handler.read_body``) and marks the
  request; reading such a body is a 413 ``invalid_request_error`` here.
- nesting depth: ``MAX_DEPTH`` containers, checked right after decoding, so no later
  stage meets a deeper value. It must hold for every stage a forwarded field reaches,
  plus the levels each adapter wraps around it: orjson's encoder stops at 255 levels,
  the Gemini SDK at about 600, and a tool call's ``arguments`` (JSON inside a string,
  decoded by the adapters with the same limit) may nest once more inside a body. 64 +
  64 + the adapters' few wrapping levels stays far below 255; real requests (tool
  schemas included) rarely pass 20.

The depth walk is iterative (a hostile body cannot exhaust the stack), level by level,
one type check per value: about 2 µs on a typical chat body, 15 µs with six tool
schemas, 35 µs on a 2,048-input embeddings body (where orjson itself takes ~90 µs).
"""
from __future__ import annotations

from typing import Any

import orjson
from django.conf import settings
from django.http import HttpRequest
from rest_framework.parsers import BaseParser

from .errors import APIError, InvalidRequest

MAX_DEPTH = 64
_CONTAINERS = frozenset((dict, list))


class TooDeep(ValueError):
    """A JSON value nested deeper than allowed; ``where`` is the top-level field, if any."""

    def __init__(self, where: str | None):
        self.where = where
        super().__init__(f"nested deeper than {MAX_DEPTH} levels")


def too_large() -> APIError:
    limit = settings.MAX_REQUEST_BYTES
    return APIError(f"The request body is larger than {limit} bytes.", status=413,
                    type="invalid_request_error", code="request_too_large")


def check_depth(value: Any, limit: int = MAX_DEPTH) -> None:
    """Raise ``TooDeep`` when ``value`` has more than ``limit`` nested containers.

    The top-level object counts as level 1; the field named is the top-level key under
    which the limit was passed (None for a top-level array). Level by level, no
    recursion: each container is visited once, each scalar is one type check.
    """
    if type(value) is dict:
        roots = [(key, child) for key, child in value.items() if type(child) in _CONTAINERS]
    elif type(value) is list:
        roots = [(None, value)]
        limit += 1  # the array itself is the first level, counted below
    else:
        return
    for where, root in roots:
        level, depth = [root], 2
        while level:
            if depth > limit:
                raise TooDeep(where)
            below = []
            keep = below.append
            for node in level:
                children = node.values() if type(node) is dict else node
                if len(children) > 8 and _CONTAINERS.isdisjoint(map(type, children)):
                    continue  # a long run of scalars (an embeddings input): skipped at C speed
                for child in children:
                    if type(child) in _CONTAINERS:
                        keep(child)
            level, depth = below, depth + 1


def loads(raw: bytes | str, limit: int = MAX_DEPTH) -> Any:
    """``orjson.loads`` with the depth limit (orjson's own errors pass through)."""
    value = orjson.loads(raw)
    check_depth(value, limit)
    return value


def parse(raw: bytes) -> Any:
    """A request body's JSON value, or the 400 that says what is wrong with it."""
    if not raw or raw.isspace():
        raise InvalidRequest("The request body is empty; send a JSON object.", code="invalid_json")
    if len(raw) > settings.MAX_REQUEST_BYTES:  # a body that did not pass through the handler
        raise too_large()
    try:
        return loads(raw)
    except orjson.JSONDecodeError as exc:
        reason = "is not UTF-8" if "utf-8" in str(exc).lower() else f"is not valid JSON ({exc})"
        raise InvalidRequest(f"The request body {reason}.", code="invalid_json") from None
    except TooDeep as exc:
        where = exc.where
        param = where if where is not None and len(where) <= 64 and where.isprintable() else "body"
        raise InvalidRequest(f"'{param}' is nested deeper than {MAX_DEPTH} levels.", param=param,
                             code="too_deep") from None


def read(request: HttpRequest) -> Any:
    """The body of a Django request as JSON (413 when the handler found it too large)."""
    if getattr(request, "body_too_large", False):
        raise too_large()
    return parse(request.body)


class JSONBodyParser(BaseParser):
    """DRF's parser for the management API: ``parse`` above, whatever the Content-Type says
    (as on the OpenAI endpoints: ``curl -d`` sends form-urlencoded by default). List it
    after the form parsers where a browser form must still be read."""

    media_type = "*/*"

    def parse(self, stream, media_type=None, parser_context=None) -> Any:
        request = (parser_context or {}).get("request")
        django_request = getattr(request, "_request", None)
        if getattr(django_request, "body_too_large", False):
            raise too_large()
        return parse(stream.read() if stream is not None else b"")
