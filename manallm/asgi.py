"""ASGI entry point, served by daphne: channels' ProtocolTypeRouter, HTTP to Django and
every WebSocket handshake refused (the gateway has no WebSocket endpoint)."""
import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "manallm.settings")

from daphne import http_protocol  # noqa: E402


class WebRequest(http_protocol.WebRequest):
    """daphne's request, with Twisted's form parsing off (its ``parsePOSTFormSubmission``).

    Twisted parses every POST body's Content-Type through the email package, to fill the
    form arguments (``request.args``); daphne hands the raw body to the application and
    never reads them. That parse cost ~7 % of the gateway's CPU per chat request.
    """

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("parsePOSTFormSubmission", False)
        super().__init__(*args, **kwargs)


http_protocol.WebRequest = WebRequest  # read when daphne's factory builds each connection

from channels.routing import ProtocolTypeRouter  # noqa: E402
from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler  # noqa: E402

from manallm.handler import get_asgi_application  # noqa: E402

# Django's own static handler serves the admin's files from the apps (no collectstatic
# step); every other path passes straight through to Django.
django_application = ASGIStaticFilesHandler(get_asgi_application())

from routing.reload import install_sighup  # noqa: E402

install_sighup()


async def refuse_websocket(scope, receive, send) -> None:
    """Close a WebSocket handshake before accepting it: the client gets a 403, and daphne
    no longer answers a bodiless 500 and logs a traceback for a scope with no application."""
    message = await receive()
    if message["type"] == "websocket.connect":
        await send({"type": "websocket.close", "code": 1008})


application = ProtocolTypeRouter({"http": django_application, "websocket": refuse_websocket})
