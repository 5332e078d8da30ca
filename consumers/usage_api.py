"""``GET /v1/usage`` (README#consumers): the hourly usage rows, filtered, grouped and priced.

DRF as DRF (an APIView, manallm.auth's session authentication, the envelope from
manallm.errors.drf_exception_handler); the query and the cost are consumers.reports'.
Whoever may write management data (manallm.auth.management_access: the admin key, a staff
session) sees every consumer; any other caller sees its own consumer's rows only, and
naming another consumer is a 403.
"""
from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from manallm.auth import StaffSession, management_access
from manallm.errors import APIError, InvalidRequest

from . import reports

UNIX_SECONDS = re.compile(r"\d{1,12}(\.\d{1,9})?")
MAX_PARAM_CHARS = 300


def parse_time(text: str, param: str) -> datetime:
    """ISO-8601 (a naive time is UTC) or Unix seconds; a 400 naming ``param`` otherwise."""
    try:
        if UNIX_SECONDS.fullmatch(text):
            return datetime.fromtimestamp(float(text), timezone.utc)
        moment = datetime.fromisoformat(text)
    except (ValueError, OverflowError, OSError):
        raise InvalidRequest(f"'{param}' must be ISO-8601 (2026-01-31T12:00:00Z) or Unix seconds.",
                             param=param) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def parse_groups(text: str) -> tuple[str, ...]:
    groups = tuple(dict.fromkeys(part.strip() for part in text.split(",")))
    if not groups or any(group not in reports.GROUPS for group in groups):
        raise InvalidRequest(f"'group_by' must be a comma-separated subset of {', '.join(reports.GROUPS)}.",
                             param="group_by")
    return groups


def text_param(request: Request, name: str) -> str | None:
    value = request.query_params.get(name)
    if value is None:
        return None
    if not value or len(value) > MAX_PARAM_CHARS or not value.isprintable():
        raise InvalidRequest(f"'{name}' must be a non-empty printable string of at most {MAX_PARAM_CHARS} "
                             "characters.", param=name)
    return value


class UsageView(APIView):
    authentication_classes = [StaffSession]
    permission_classes = []

    def get(self, request: Request) -> Response:
        own = getattr(request._request, "consumer", None) or "anonymous"
        consumer = text_param(request, "consumer")
        if management_access(request._request) != "admin":
            if consumer is not None and consumer != own:
                raise APIError("A client key reads its own consumer's usage only.", status=403,
                               type="permission_denied", code="consumer_not_allowed", param="consumer")
            consumer = own
        now = datetime.now(timezone.utc)
        since_text, until_text = text_param(request, "since"), text_param(request, "until")
        until = parse_time(until_text, "until") if until_text else now
        since = parse_time(since_text, "since") if since_text else until - timedelta(hours=24)
        if since >= until:
            raise InvalidRequest("'since' must be before 'until'.", param="since")
        group_text = text_param(request, "group_by")
        group_by = parse_groups(group_text) if group_text else reports.DEFAULT_GROUPS
        rows = reports.usage_rows(since, until, consumer=consumer, model=text_param(request, "model"),
                                  group_by=group_by)
        return Response({"since": reports.iso(since), "until": reports.iso(until), "group_by": list(group_by),
                         "rows": rows})
