"""The alias side of the operator console in a real browser (README#operator-console): headless
Chromium logs in to a real gateway's admin, opens an alias, reads its route preview and
history diff, restores a version and sends a prompt with Try it. Screenshots go to the
test's temporary directory."""
from contextlib import closing

import httpx
import pytest

from tests.helpers import admin_login, assert_error, create_superuser, csrf_token_of

ADMIN = {"Authorization": "Bearer admin-key"}
CLIENT = {"Authorization": "Bearer client-key"}
KEYS = {"MANA_LLM_API_KEY": "client-key", "MANA_LLM_ADMIN_KEY": "admin-key", "OPENAI_API_KEY": ""}


@pytest.fixture
def server(make_server, fake):
    return make_server(env=KEYS)


def put(server, chain, description):
    response = httpx.put(f"{server.url}/v1/aliases/mana/console", headers=ADMIN, timeout=5,
                         json={"description": description, "chain": chain})
    assert response.status_code in (200, 201), response.text


def test_alias_page_preview_history_restore_and_try_it(server, fake, chromium, tmp_path):
    put(server, ["openai/gpt-4o-mini", "ollama/qwen2.5:7b"], "first")
    put(server, ["openai/gpt-4o-mini", "groq/llama-3.1-8b-instant"], "second")
    username, password = create_superuser(server)
    page = chromium.new_page()
    try:
        page.goto(f"{server.url}/admin/login/")
        page.fill("#id_username", username)
        page.fill("#id_password", password)
        page.click("input[type=submit]")
        page.wait_for_url(f"{server.url}/admin/")

        page.goto(f"{server.url}/admin/routing/alias/")
        page.click("text=mana/console")
        preview = page.locator("#route-preview")
        preview.wait_for()
        assert page.locator("#would-serve").inner_text() == "groq/llama-3.1-8b-instant"
        rows = preview.locator("tbody tr")
        assert rows.nth(0).inner_text().split() == ["openai/gpt-4o-mini", "skipped", "unconfigured"]
        assert rows.nth(1).inner_text().split() == ["groq/llama-3.1-8b-instant", "ready"]
        page.screenshot(path=str(tmp_path / "1-alias-page.png"), full_page=True)

        # The history: newest first, the chain's change marked line by line.
        history = page.locator("#alias-history .change")
        assert history.count() == 2
        newest = history.nth(0)
        assert newest.locator(".action").inner_text() == "updated"
        assert newest.locator(".actor").inner_text() == "api:admin"
        assert newest.locator(".removed").all_inner_texts() == ["- description: first", "- - ollama/qwen2.5:7b"]
        assert newest.locator(".added").all_inner_texts() == ["+ description: second",
                                                              "+ - groq/llama-3.1-8b-instant"]
        newest.scroll_into_view_if_needed()
        page.screenshot(path=str(tmp_path / "2-history-diff.png"), full_page=True)

        # Restore the first version: the page comes back saying so, preview and history follow.
        history.nth(1).locator("text=Restore this version").click()
        page.wait_for_selector("text=to its version of")
        assert page.locator("#would-serve").inner_text() == "ollama/qwen2.5:7b"
        assert page.locator("#alias-history .change .action").first.inner_text() == "restored"
        assert page.locator("#alias-history .change .actor").first.inner_text() == f"admin:{username}"
        assert httpx.get(f"{server.url}/v1/aliases/mana/console", headers=CLIENT, timeout=5).json()["chain"] == [
            "openai/gpt-4o-mini", "ollama/qwen2.5:7b"]
        page.screenshot(path=str(tmp_path / "3-restored.png"), full_page=True)

        # Try it: one prompt through the alias, the answer and the entry that served it.
        page.fill("#try-form input[name=prompt]", "Say hello")
        assert not page.locator("#try-error").is_visible()
        page.click("#try-form button")
        page.locator("#try-result").wait_for()
        assert not page.locator("#try-error").is_visible()
        assert page.locator("#try-served").inner_text() == "ollama/qwen2.5:7b"
        assert page.locator("#try-answer").inner_text().strip()
        assert page.locator("#try-attempts").inner_text() == "openai/gpt-4o-mini (unconfigured)"
        assert page.locator("#try-time").inner_text().endswith(" s")
        page.screenshot(path=str(tmp_path / "4-try-it.png"), full_page=True)

        # An upstream error is shown as the envelope's message.
        fake.fault("ollama", "qwen2.5:7b", error_code="content_policy_violation")
        page.click("#try-form button")
        page.locator("#try-error").wait_for()
        assert "safety" in page.locator("#try-error").inner_text()
        assert not page.locator("#try-result").is_visible()
        page.screenshot(path=str(tmp_path / "5-try-it-error.png"), full_page=True)
    finally:
        page.close()
    assert (tmp_path / "4-try-it.png").stat().st_size > 0


def test_try_it_needs_staff_and_answers_in_the_envelope(server, fake):
    url = f"{server.url}/admin/routing/alias/try/"
    with closing(admin_login(server, *create_superuser(server))) as session:
        token = csrf_token_of(session.get("/admin/routing/alias/").text)

        def try_it(**data):
            return session.post(url, data={"csrfmiddlewaretoken": token, **data})

        response = try_it(alias="mana/fast-text", prompt="hello")
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["served_by"] == "ollama/qwen2.5:7b" and body["answer"] and body["attempts"] == []
        assert_error(try_it(alias="mana/nope", prompt="hello"), 404, "model_not_found", param="alias")
        assert_error(try_it(alias="mana/fast-text", prompt=""), 400, "invalid_request_error", param="prompt")
        for model in ("qwen2.5:7b", "*"):
            fake.fault("ollama", model, status=500)
            fake.fault("groq", "*", status=500)
            fake.fault("openrouter", "*", status=500)
        error = assert_error(try_it(alias="mana/fast-text", prompt="hello"), 503, "no_healthy_provider")
        assert "No provider could serve" in error["message"]
        assert session.post(url, data={"alias": "mana/fast-text", "prompt": "hi"}).status_code == 403  # no CSRF token
    # Not logged in: refused in the envelope, never run.
    with httpx.Client(base_url=server.url, timeout=10) as anonymous:
        token = csrf_token_of(anonymous.get("/admin/login/").text)
        response = anonymous.post(url, data={"csrfmiddlewaretoken": token, "alias": "mana/fast-text", "prompt": "x"})
        assert_error(response, 403, "permission_error", code="staff_required")


@pytest.mark.django_db(transaction=True)
async def test_try_it_is_a_request_of_the_admin_consumer(fake, settings, django_user_model):
    """Usage and the request log hear of Try it like of any chat request: one finished
    Exchange, consumer ``admin``, the serving entry and the tokens."""
    from asgiref.sync import sync_to_async
    from django.test import AsyncClient

    from health.board import breakers
    from manallm import exchange
    from providers import registry
    from routing.models import Alias
    from routing.validators import validate_alias

    settings.PROVIDERS = {"ollama": {"kind": "ollama", "base_url": fake.url, "api_key": None,
                                     "max_concurrent": None, "timeout": 5}}  # groq unconfigured here
    await sync_to_async(Alias.objects.put)(validate_alias("mana/t", {"chain": ["groq/m0", "ollama/m1"]}))
    breakers.clear()
    finished = []
    exchange.on_finish(finished.append)
    try:
        user = await django_user_model.objects.acreate(username="staff", is_staff=True, is_active=True)
        client = AsyncClient()
        await client.aforce_login(user)
        response = await client.post("/admin/routing/alias/try/", {"alias": "mana/t", "prompt": "hello"})
        assert response.status_code == 200, response.content
        assert response.json()["served_by"] == "ollama/m1"
    finally:
        exchange.remove_listener(finished.append)
        await registry.aclose_all()
    [done] = finished
    assert (done.consumer, done.kind, done.requested, done.alias, done.target) == (
        "admin", "chat", "mana/t", "mana/t", "ollama/m1")
    assert done.attempts == [{"model": "groq/m0", "reason": "unconfigured"}]
    assert done.status == 200 and done.prompt_tokens > 0 and done.completion_tokens > 0
