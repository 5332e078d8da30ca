"""make bench's floor: what daphne and the gateway's HTTP client cost with nothing else.

A bare ASGI app served by the same daphne as the gateway. ``POST /forward`` reads the
request body and forwards it unchanged to ``FLOOR_UPSTREAM`` on a client made by the
gateway's own ``providers.transport.client`` (httpx over aiohttp's pool, the same limits,
timeouts and default headers as an OpenAI-compatible provider), then returns the answer:
the least any gateway on this stack pays per proxied request. Any other path reads the
body and answers a constant: daphne alone. No Django request machinery runs
(the settings module is named only because providers' imports read it).
"""
import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "manallm.settings")

from providers import transport  # noqa: E402

UPSTREAM = os.environ.get("FLOOR_UPSTREAM", "")
HEADERS = {"Accept": "application/json", "User-Agent": "manallm",
           "Authorization": f"Bearer {os.environ.get('OPENAI_API_KEY', 'bench')}"}
CONSTANT = b'{"ok":true}'
_client = None


async def read_body(receive) -> bytes:
    chunks, more = [], True
    while more:
        message = await receive()
        chunks.append(message.get("body", b""))
        more = message.get("more_body", False)
    return b"".join(chunks)


async def forward(body: bytes) -> tuple[int, bytes, bytes]:
    """(status, content type, body) of the upstream's answer to ``body``."""
    global _client
    if _client is None:  # made inside daphne's event loop, as ClientHolder does
        _client = transport.client(timeout=120, connect_timeout=2, headers=HEADERS, follow_redirects=False)
    response = await _client.post(UPSTREAM, content=body, headers={"Content-Type": "application/json"})
    return response.status_code, response.headers.get("content-type", "application/json").encode(), response.content


async def application(scope, receive, send) -> None:
    if scope["type"] != "http":
        return
    body = await read_body(receive)
    if scope["path"] == "/forward":
        status, content_type, content = await forward(body)
    else:
        status, content_type, content = 200, b"application/json", CONSTANT
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", content_type), (b"content-length", str(len(content)).encode())]})
    await send({"type": "http.response.body", "body": content})
