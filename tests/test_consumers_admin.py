"""Issue 11: consumers in the Django admin, in a real browser against a real gateway
(README#consumers) — log in, create a consumer with a scope and a key, read the key from
the confirmation message (once), call the gateway with it through the SDK, revoke it."""
import re

import httpx
import openai
import pytest

from tests.helpers import assert_sdk_error, sdk

ADMIN_KEY = "admin-key"
KEY = re.compile(r"mk-[A-Za-z0-9_-]{40}")


@pytest.fixture
def admin_page(make_server, fake, chromium):
    server = make_server(env={"MANA_LLM_ADMIN_KEY": ADMIN_KEY})
    server.manage("shell", "-c", "from django.contrib.auth.models import User; "
                                 "User.objects.create_superuser('root', 'root@example.com', 'pw-for-tests')")
    page = chromium.new_page()
    page.goto(f"{server.url}/admin/login/")
    page.fill("#id_username", "root")
    page.fill("#id_password", "pw-for-tests")
    page.click("input[type=submit]")
    page.wait_for_url(f"{server.url}/admin/")
    yield server, page
    page.close()


def ask(server, key, model="mana/fast-text"):
    return sdk(server, api_key=key).chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}])


def success_message(page) -> str:
    page.locator(".messagelist .success").first.wait_for()
    return "\n".join(page.locator(".messagelist .success").all_inner_texts())


def test_create_issue_call_revoke(admin_page):
    server, page = admin_page
    page.goto(f"{server.url}/admin/consumers/consumer/add/")
    page.fill("#id_name", "browser-team")
    page.fill("#id_description", "made in the admin")
    page.fill("#id_allowed_models", "mana/*\nollama/*\n")
    page.fill("#id_rpm", "30")
    page.check("#id_issue_key")
    responses = []
    page.on("response", lambda response: responses.append(response))
    page.click("input[name=_save]")

    message = success_message(page)
    found = KEY.findall(message)
    assert len(found) == 1, repr(message)
    key = found[0]
    # Shown on the page, never carried in a cookie: the message (signed and compressed, not
    # encrypted, in Django's default cookie storage) stays on the server until shown.
    set_cookies = [response.header_value("set-cookie") or "" for response in responses]
    assert set_cookies and not any("messages=" in header for header in set_cookies)
    assert ask(server, key).choices[0].message.content
    with pytest.raises(openai.PermissionDeniedError) as excinfo:
        ask(server, key, "groq/llama-3.1-8b-instant")
    assert_sdk_error(excinfo, openai.PermissionDeniedError, 403, "permission_denied")

    # The API sees what the admin wrote.
    data = httpx.get(f"{server.url}/v1/consumers/browser-team", timeout=10,
                     headers={"Authorization": f"Bearer {ADMIN_KEY}"}).json()
    assert data["allowed_models"] == ["mana/*", "ollama/*"] and data["rpm"] == 30
    assert [k["prefix"] for k in data["keys"]] == [key[3:11]]

    # The change page lists the key by its prefix only, with the usage summary; the key is not shown again.
    page.click("#result_list a:text-is('browser-team')")
    page.wait_for_url("**/change/")
    html = page.content()
    assert key[3:11] in html and key not in html and key[11:] not in html
    assert "usage" in html.lower()
    assert page.input_value("#id_allowed_models") == "mana/*\nollama/*"

    # Revoke it inline: the gateway refuses it at once, saying why.
    page.check("#id_keys-0-revoke")
    page.click("input[name=_continue]")
    assert "changed successfully" in success_message(page)
    with pytest.raises(openai.AuthenticationError) as excinfo:
        ask(server, key)
    assert "revoked" in assert_sdk_error(excinfo, openai.AuthenticationError, 401, "authentication_error").message

    # The list's action issues another key, shown once in its message.
    page.goto(f"{server.url}/admin/consumers/consumer/")
    page.check("input[name=_selected_action]")
    page.select_option("select[name=action]", "issue_keys")
    page.click("button[name=index]")
    second = KEY.findall(success_message(page))
    assert len(second) == 1 and second[0] != key
    assert ask(server, second[0]).choices[0].message.content
    page.reload()
    assert not KEY.search(page.content())  # once only

    log = server.logs()
    for secret in (key, second[0]):
        assert secret not in log and secret[3:] not in log


@pytest.mark.parametrize("fields, error", [
    ({"#id_name": "env"}, "built-in consumer"),
    ({"#id_name": "Bad Name"}, "must match"),
    ({"#id_name": "ok", "#id_allowed_models": "ma*na"}, "may only end a pattern"),
    ({"#id_name": "ok", "#id_token_budget": "1000"}, "is required with token_budget"),
    ({"#id_name": "ok", "#id_rpm": "0"}, "positive whole number"),
])
def test_the_admin_uses_the_api_validator(admin_page, fields, error):
    server, page = admin_page
    page.goto(f"{server.url}/admin/consumers/consumer/add/")
    for selector, value in fields.items():
        page.fill(selector, value)
    page.check("#id_issue_key")
    page.click("input[name=_save]")
    assert error in page.locator(".errorlist").first.inner_text()
    assert page.locator(".messagelist .success").count() == 0
    assert not KEY.search(page.content())
    listed = httpx.get(f"{server.url}/v1/consumers", timeout=10, headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    assert listed.json()["consumers"] == []
