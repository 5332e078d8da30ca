"""Try it (README#operator-console): staff send one short prompt through an alias from the
admin's alias page and see the answer, the serving entry, the attempts and the time.

An async view on the admin's URLs (``AliasAdmin.get_urls``), so the upstream call waits
on the event loop rather than holding the admin's one sync thread. The call goes to
the router in process, as the consumer ``admin``, with an Exchange begun and finished
like a chat request's (usage and the request log see it); an error is the envelope,
whose message the page shows, never a traceback (manallm.views.openai_view).
"""
from django.http import HttpRequest, HttpResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import csrf_protect

from manallm.errors import InvalidRequest, ModelNotFound, PermissionDenied, json_response
from manallm.views import openai_view

from . import schema
from .router import router
from .table import aliases
from .views import begin, served_by

MAX_PROMPT_CHARS = 2000
MAX_TOKENS = 256  # a short answer: this is a check that the route works, not a chat


@csrf_protect
@never_cache
@openai_view("POST")
async def try_alias(request: HttpRequest) -> HttpResponse:
    """POST ``alias`` and ``prompt`` (a form, with the CSRF token) -> ``{"answer",
    "served_by", "attempts", "seconds", "usage"}`` or the error envelope."""
    user = getattr(request, "user", None)  # resolved by ClientKeyMiddleware on browser paths
    if user is None or not (user.is_active and user.is_staff):
        raise PermissionDenied("Try it is for staff: log in to the admin.", code="staff_required")
    name = request.POST.get("alias", "")
    prompt = request.POST.get("prompt", "").strip()
    if name not in aliases.snapshot.aliases:
        raise ModelNotFound(f"Unknown alias {name!r}.", param="alias")
    if not prompt or len(prompt) > MAX_PROMPT_CHARS:
        raise InvalidRequest(f"Write a prompt of 1 to {MAX_PROMPT_CHARS} characters.", param="prompt")
    body = schema.validate_chat({"model": name, "messages": [{"role": "user", "content": prompt}],
                                 "max_tokens": MAX_TOKENS})
    request.consumer = "admin"  # staff act as the admin (README#consumers)
    exchange = await begin(request, body, "chat")
    served = await router.chat(body)
    served_by(exchange, served)
    usage = served.value.get("usage")
    exchange.add_usage(usage)
    choices = served.value.get("choices") or [{}]
    return json_response({"answer": (choices[0].get("message") or {}).get("content") or "",
                          "served_by": served.target, "attempts": exchange.attempts,
                          "seconds": round(exchange.latency, 3), "usage": usage})
