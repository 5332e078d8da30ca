"""Middleware for the gateway.

Every class here is async-native: Django runs a sync-only middleware hook through a
thread hop, and the /v1 hot path is meant to have none beyond what Django itself does.
"""
import logging
import os
import re
import time

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.utils.cache import patch_vary_headers
from django.utils.module_loading import import_string

from consumers.keys import directory as consumer_keys

from . import auth
from .errors import AuthenticationFailed
from .logs import request_id_var
from .paths import needs_browser_stack

# The cookie-based stack the admin needs (sessions, auth, CSRF, messages). The
# management API accepts a staff session too, so it runs there as well; the key-only
# API paths skip it (which paths: manallm.paths).
BROWSER_STACK = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Admin login throttling (README#exposing-manallm): last, after authentication.
    "axes.middleware.AxesMiddleware",
]

access_log = logging.getLogger("manallm.access")
# A client's X-Request-ID is echoed and logged only when it is a bounded run of visible
# ASCII (README#endpoints); anything else (control characters, spaces, 8 KB) is replaced
# by a generated id rather than carried into a header or a log line.
REQUEST_ID = re.compile(r"[!-~]{1,128}")


class AsyncMiddleware:
    async_capable = True
    sync_capable = False

    def __init__(self, get_response):
        if not iscoroutinefunction(get_response):
            raise TypeError(f"{type(self).__name__} needs an async handler chain")
        self.get_response = get_response
        markcoroutinefunction(self)


class RequestIDMiddleware(AsyncMiddleware):
    """Echo X-Request-ID (or make one, also in place of an unfit one: REQUEST_ID), put it
    in every log line of the request, and log one line per API request (what was asked,
    what served it, how long it took)."""

    async def __call__(self, request):
        request_id = request.headers.get("X-Request-ID")
        if not request_id or not REQUEST_ID.fullmatch(request_id):
            request_id = os.urandom(16).hex()  # as random as uuid4().hex, a quarter of its cost
        request.request_id = request_id
        # Not reset on the way out: Django's ASGI handler serves each request in a task of
        # its own (its own copy of the context), and what is logged after this returns — a
        # streamed body's failure, django.request's 5xx line — belongs to this request too.
        request_id_var.set(request_id)
        started = time.perf_counter()
        response = await self.get_response(request)
        response["X-Request-ID"] = request_id
        if request.path.startswith("/v1/") and access_log.isEnabledFor(logging.INFO):
            path = request.path
            if not path.isprintable():  # a decoded %0A must not start a forged log line
                path = path.encode("unicode_escape").decode("ascii")
            access_log.info("%s %s %s %.1fms served_by=%s consumer=%s", request.method, path,
                            response.status_code, (time.perf_counter() - started) * 1000,
                            response.get("X-Mana-LLM-Resolved", "-"), getattr(request, "consumer", None) or "-")
        return response


class SecurityMiddleware(AsyncMiddleware):
    """Django's SecurityMiddleware (README#exposing-manallm: HTTPS redirect, HSTS, nosniff,
    Referrer-Policy, Cross-Origin-Opener-Policy), its hooks called inline.

    Django's class is a MiddlewareMixin, which under ASGI runs each hook through
    sync_to_async: two thread hops per request. The hooks only read settings fixed at
    start and set headers, so the event loop runs them. The redirect applies to every
    path (0.3 µs when off); the headers, which only browsers read, only where a browser
    goes (the browser-stack paths): setting them costs ~10 µs a response.
    """

    runs = ("django.middleware.security.SecurityMiddleware",)

    def __init__(self, get_response):
        super().__init__(get_response)
        from django.middleware.security import SecurityMiddleware as DjangoSecurityMiddleware

        self.django = DjangoSecurityMiddleware(get_response)

    async def __call__(self, request):
        if self.django.redirect:  # fixed at start: SECURE_SSL_REDIRECT
            redirect = self.django.process_request(request)
            if redirect is not None:
                return redirect
        response = await self.get_response(request)
        if needs_browser_stack(request.path):
            return self.django.process_response(request, response)
        return response


class CorsMiddleware(AsyncMiddleware):
    """django-cors-headers (README#configuration: ``CORS_ORIGINS``), skipped where it can
    only add ``Vary: origin``.

    A request with no ``Origin`` header and no preflight gets nothing else from it; for
    those (every SDK and server-side client) the header is added here directly instead of
    through its two checks, a signal and the vary patch (~1.5 % of a chat request).
    """

    runs = ("corsheaders.middleware.CorsMiddleware",)

    def __init__(self, get_response):
        super().__init__(get_response)
        from corsheaders.middleware import CorsMiddleware as Cors

        self.cors = Cors(get_response)

    async def __call__(self, request):
        if "HTTP_ORIGIN" in request.META or request.method == "OPTIONS":
            return await self.cors(request)
        response = await self.get_response(request)
        if self.cors.is_enabled(request):
            patch_vary_headers(response, ("origin",))
        return response


class PrometheusMiddleware(AsyncMiddleware):
    """django-prometheus's request metrics, called inline: its hooks only touch counters."""

    def __init__(self, get_response):
        super().__init__(get_response)
        from django_prometheus.middleware import PrometheusAfterMiddleware, PrometheusBeforeMiddleware

        class KeepLabelledChildren(PrometheusAfterMiddleware):
            """Each labelled child looked up once: ``labels()`` stringifies, locks and hashes
            on every call, eight times a request."""

            children: dict = {}

            def label_metric(self, metric, request, response=None, **labels):
                if not labels:
                    return metric
                key = (metric, *labels.items())
                child = self.children.get(key)
                if child is None:
                    child = self.children[key] = metric.labels(**labels)
                return child

        self.before = PrometheusBeforeMiddleware(get_response)
        self.after = KeepLabelledChildren(get_response)

    async def __call__(self, request):
        self.before.process_request(request)
        self.after.process_request(request)
        response = await self.get_response(request)
        self.after.process_response(request, response)
        return self.before.process_response(request, response)


class BrowserStackMiddleware(AsyncMiddleware):
    """Run the session/auth/CSRF stack only where a browser session can matter."""

    runs = tuple(BROWSER_STACK)

    def __init__(self, get_response):
        super().__init__(get_response)
        handler = get_response
        for path in reversed(BROWSER_STACK):
            handler = import_string(path)(handler)
        self.browser_handler = handler

    async def __call__(self, request):
        if needs_browser_stack(request.path):
            return await self.browser_handler(request)
        return await self.get_response(request)


class ClientKeyMiddleware(AsyncMiddleware):
    """Who is calling (``request.consumer``, auth.client_identity with the consumers' keys
    held in memory): with MANA_LLM_API_KEY set or any consumer key issued, every /v1 call
    needs a client key (MANA_LLM_API_KEY, a consumer's ``mk-`` key, or the admin key); a
    revoked or expired key, or one of a deactivated consumer, is refused with its reason."""

    def __init__(self, get_response):
        super().__init__(get_response)
        # Built once, when the process's handler is: the startup line saying who may write.
        logging.getLogger("manallm").info(auth.management_policy())

    async def __call__(self, request):
        if hasattr(request, "auser"):
            # A browser path: resolve the session user here, asynchronously. The lazy
            # request.user would query the database from the event loop (the key and
            # staff checks below and in async views read it).
            request.user = await request.auser()
        refused = None
        try:
            consumer = auth.client_identity(request, consumer_keys)
        except AuthenticationFailed as error:  # a revoked or expired key: the answer says which
            consumer, refused = None, error
        if consumer is None and request.path.startswith("/v1/") and request.method != "OPTIONS":
            return (refused or AuthenticationFailed(
                "Missing or invalid API key: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'.")).response()
        request.consumer = consumer
        return await self.get_response(request)
