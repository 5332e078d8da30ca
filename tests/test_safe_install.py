"""A fresh install is safe to expose (README#exposing-manallm): its own secret key, management
writes only from loopback or staff without an admin key, admin login lockout, HTTPS-proxy
settings and headers, `check --deploy` clean, and no credentials from upstream URLs."""
import ast
import hashlib
import ipaddress
import re
import stat
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from django.test import Client, override_settings

from health.breaker import clean_error
from manallm import auth
from manallm.checks import check_running_stack, check_running_stack_deploy
from manallm.secret_key import key_file_for
from providers.base import Provider, redact_urls
from tests.helpers import assert_error, chat, unused_port, wait_for
from tests.server import ROOT, Server, gateway_server, provider_env

ALIAS = {"description": "safe install", "chain": ["ollama/qwen2.5:7b"]}
NO_SECRET = {"DJANGO_SECRET_KEY": ""}  # unset for the server, whatever the test runner's environment holds


def key_file(server):
    return server.workdir / "db.sqlite3.secret_key"


def create_staff(server, username, password):
    server.manage("shell", "-c", "from django.contrib.auth.models import User; "
                  f"User.objects.create_superuser({username!r}, password={password!r})")


def admin_login(client, username, password, **headers):
    """POST the admin login form as a browser does (CSRF cookie and token first)."""
    client.get("/admin/login/", headers=headers)
    token = client.cookies["csrftoken"]
    return client.post("/admin/login/?next=/admin/", headers=headers, data={
        "username": username, "password": password, "csrfmiddlewaretoken": token, "next": "/admin/"})


def secret_key_of(env):
    """The SECRET_KEY a process started with ``env`` uses (its digest: keys stay out of test output)."""
    code = ("import django, hashlib; django.setup(); from django.conf import settings; "
            "print(hashlib.sha256(settings.SECRET_KEY.encode()).hexdigest())")
    return subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env={**env, "DJANGO_SETTINGS_MODULE": "manallm.settings"}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


# --- 1. the secret key -------------------------------------------------------------------


def test_fresh_installs_generate_their_own_keys(make_server):
    first, second = make_server(NO_SECRET, name="one"), make_server(NO_SECRET, name="two")
    keys = []
    for server in (first, second):
        path = key_file(server)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        keys.append(path.read_text().strip())
        assert len(keys[-1]) >= 50
    assert keys[0] != keys[1]


def test_the_key_outlives_a_restart_and_so_do_admin_sessions(make_server, fake_upstream):
    server = make_server(NO_SECRET, name="restart")
    key = key_file(server).read_text()
    create_staff(server, "root", "correct horse battery")
    with httpx.Client(base_url=server.url) as client:
        assert admin_login(client, "root", "correct horse battery").status_code == 302
        session = {"sessionid": client.cookies["sessionid"]}
    assert httpx.get(f"{server.url}/admin/", cookies=session).status_code == 200
    server.stop()

    again = gateway_server(server.workdir, fake_upstream.url, NO_SECRET).start()
    try:
        assert key_file(server).read_text() == key
        # Django checks a session against a hash keyed by SECRET_KEY: a new key logs everyone out.
        assert httpx.get(f"{again.url}/admin/", cookies=session).status_code == 200
    finally:
        again.stop()
    other = gateway_server(server.workdir, fake_upstream.url, {"DJANGO_SECRET_KEY": "x" * 60}).start()
    try:
        assert httpx.get(f"{other.url}/admin/", cookies=session).status_code == 302  # the control
    finally:
        other.stop()


def test_workers_starting_together_agree_on_one_key(tmp_path):
    env = Server(tmp_path, NO_SECRET).env
    processes = [secret_key_of(env) for _ in range(6)]
    digests = {process.communicate(timeout=60)[0].strip() for process in processes}
    assert all(process.returncode == 0 for process in processes)
    assert len(digests) == 1 and len(digests.pop()) == 64
    assert sorted(path.name for path in tmp_path.iterdir()) == ["db.sqlite3.secret_key"]  # no temporary left


def test_a_set_key_is_used_as_is(tmp_path):
    env = Server(tmp_path, {"DJANGO_SECRET_KEY": "k" * 60}).env
    out, _ = secret_key_of(env).communicate(timeout=60)
    assert out.strip() == hashlib.sha256(b"k" * 60).hexdigest()
    assert not (tmp_path / "db.sqlite3.secret_key").exists()


def test_a_damaged_key_file_stops_the_start_with_a_clear_message(tmp_path):
    (tmp_path / "db.sqlite3.secret_key").write_text("short\n")
    result = Server(tmp_path, NO_SECRET).manage("check", check=False)
    assert result.returncode != 0
    assert "does not hold a usable secret key" in result.stderr


def test_without_a_database_file_the_key_lives_in_the_project_directory_and_is_ignored_by_git():
    project = Path("/srv/manallm")
    assert key_file_for({"ENGINE": "django.db.backends.postgresql", "NAME": "mana"}, project) == project / ".secret_key"
    assert key_file_for({"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}, project) == project / ".secret_key"
    for name in (".secret_key", "db.sqlite3.secret_key"):
        ignored = subprocess.run(["git", "check-ignore", "-q", name], cwd=ROOT)
        assert ignored.returncode == 0, name


def test_no_constant_secret_key_in_the_source():
    tree = ast.parse((ROOT / "manallm" / "settings.py").read_text())
    [assignment] = [node for node in ast.walk(tree) if isinstance(node, ast.Assign)
                    and any(getattr(target, "id", None) == "SECRET_KEY" for target in node.targets)]
    [read] = [node for node in ast.walk(assignment.value) if isinstance(node, ast.Call)
              and getattr(node.func, "id", None) == "env"]
    assert [ast.literal_eval(arg) for arg in read.args] == ["DJANGO_SECRET_KEY"] and not read.keywords  # no default
    assert not any("insecure" in path.read_text() for path in (ROOT / "manallm").glob("*.py"))


# --- 2. management writes without an admin key ---------------------------------------------


def non_loopback_address():
    """An address of this machine that is not loopback (``hostname -I``), or None."""
    try:
        words = subprocess.run(["hostname", "-I"], capture_output=True, text=True, timeout=5).stdout.split()
    except (OSError, subprocess.SubprocessError):
        return None
    for word in words:
        address = ipaddress.ip_address(word)
        if address.version == 4 and not address.is_loopback and not address.is_link_local:
            return word
    return None


class EveryInterfaceServer(Server):
    bind = "0.0.0.0"


@pytest.fixture
def open_gateway(tmp_path, fake_upstream):
    server = EveryInterfaceServer(tmp_path / "open", {**provider_env(fake_upstream.url), **NO_SECRET})
    server.prepare().start()
    yield server
    server.stop()


def test_remote_management_writes_are_refused_without_an_admin_key(open_gateway, fake):
    address = non_loopback_address()
    if address is None:
        pytest.skip("this machine has no non-loopback address; the in-process tests below cover the rule")
    assert "management writes: loopback clients and staff sessions only (MANA_LLM_ADMIN_KEY unset)" in \
        open_gateway.logs()
    remote = httpx.Client(base_url=f"http://{address}:{open_gateway.port}", timeout=20)
    local = httpx.Client(base_url=open_gateway.url, timeout=20)
    with remote, local:
        assert remote.post("/v1/chat/completions", json=chat()).status_code == 200  # the API is open
        for headers in ({}, {"X-Forwarded-For": "127.0.0.1", "X-Real-IP": "127.0.0.1"}):
            refused = remote.put("/v1/aliases/mana/safe", json=ALIAS, headers=headers)
            error = assert_error(refused, 403, "permission_error")
            assert "MANA_LLM_ADMIN_KEY" in error["message"]
            assert_error(remote.delete("/v1/aliases/mana/fast-text", headers=headers), 403, "permission_error")
            assert_error(remote.post("/v1/health/ollama/reset", headers=headers), 403, "permission_error")
        assert local.get("/v1/aliases/mana/safe").status_code == 404  # nothing was written
        assert local.get("/v1/aliases/mana/fast-text").status_code == 200

        assert local.put("/v1/aliases/mana/safe", json=ALIAS).status_code == 201
        assert local.post("/v1/health/ollama/reset").status_code == 200
        assert local.delete("/v1/aliases/mana/safe").status_code == 204


# In process: the same rule for addresses this machine may not have (Django's test client
# sets REMOTE_ADDR as daphne does from the socket).
pytestmark_db = pytest.mark.django_db


def put_alias(client, **headers):
    return client.put("/v1/aliases/mana/safe", ALIAS, content_type="application/json", headers=headers)


@pytest.fixture
def no_keys(settings):
    settings.MANA_LLM_API_KEYS = []
    settings.MANA_LLM_ADMIN_KEY = None
    settings.BEHIND_HTTPS_PROXY = False
    return settings


@pytestmark_db
@pytest.mark.parametrize("address", ["127.0.0.1", "127.8.9.10", "::1", "::ffff:127.0.0.1"])
def test_loopback_clients_may_write(no_keys, address):
    assert put_alias(Client(REMOTE_ADDR=address)).status_code == 201


@pytestmark_db
@pytest.mark.parametrize("address", ["192.0.2.9", "10.0.0.1", "::ffff:192.0.2.9", "fd00::2", "", "unknown"])
def test_other_clients_may_not(no_keys, address):
    response = put_alias(Client(REMOTE_ADDR=address), x_forwarded_for="127.0.0.1")
    assert "MANA_LLM_ADMIN_KEY" in assert_error(response, 403, "permission_error")["message"]


@pytestmark_db
def test_a_staff_session_may_write_from_anywhere(no_keys, django_user_model):
    client = Client(enforce_csrf_checks=True, REMOTE_ADDR="192.0.2.9")
    client.force_login(django_user_model.objects.create_user("staff", password="pw", is_staff=True))
    client.get("/admin/")
    assert put_alias(client, x_csrftoken=client.cookies["csrftoken"].value).status_code == 201


@pytestmark_db
def test_behind_a_proxy_no_client_is_local(no_keys):
    no_keys.BEHIND_HTTPS_PROXY = True
    response = put_alias(Client(REMOTE_ADDR="127.0.0.1"), x_forwarded_proto="https")
    assert_error(response, 403, "permission_error")


@pytestmark_db
def test_with_an_admin_key_the_key_decides(no_keys):
    no_keys.MANA_LLM_ADMIN_KEY = "admin-key"
    assert_error(put_alias(Client(REMOTE_ADDR="127.0.0.1")), 401, "authentication_error")
    assert put_alias(Client(REMOTE_ADDR="192.0.2.9"), authorization="Bearer admin-key").status_code == 201


def test_the_startup_line_names_the_rule(settings):
    settings.MANA_LLM_ADMIN_KEY, settings.BEHIND_HTTPS_PROXY = None, False
    assert auth.management_policy() == \
        "management writes: loopback clients and staff sessions only (MANA_LLM_ADMIN_KEY unset)"
    settings.BEHIND_HTTPS_PROXY = True
    assert "staff sessions only" in auth.management_policy()
    settings.MANA_LLM_ADMIN_KEY = "admin-key"
    assert auth.management_policy() == "management writes: admin key or staff session required"


# --- 3. admin login lockout ------------------------------------------------------------------


def test_admin_login_locks_out_after_five_failures(make_server, fake):
    server = make_server(name="axes")
    create_staff(server, "root", "the right password")
    create_staff(server, "other", "another password")
    with httpx.Client(base_url=server.url, timeout=20) as client:
        for _ in range(4):
            failed = admin_login(client, "root", "wrong")
            assert failed.status_code == 200 and "sessionid" not in client.cookies
        admin_login(client, "root", "wrong")  # the fifth failure
        refused = admin_login(client, "root", "the right password")
        assert refused.status_code == 429 and "sessionid" not in client.cookies
        assert client.get("/admin/").status_code == 302  # still not logged in
    with httpx.Client(base_url=server.url, timeout=20) as client:
        # Another account from the same address is unaffected, and so is the API.
        assert admin_login(client, "other", "another password").status_code == 302
        assert client.get("/admin/").status_code == 200
        assert client.post("/v1/chat/completions", json=chat()).status_code == 200


# --- 4./5. HTTPS behind a proxy, headers, check --deploy --------------------------------------


def readme_production_env():
    """The variables of the README's production block (section "Exposing manallm")."""
    section = (ROOT / "README.md").read_text().split("## Exposing manallm", 1)[1]
    block = re.search(r"```sh\n(.*?)```", section, re.S).group(1)
    return dict(line.split("=", 1) for line in block.splitlines() if line and not line.startswith("#"))


def test_check_deploy_is_clean_under_the_readme_production_environment(tmp_path):
    production = readme_production_env()
    assert {"ALLOWED_HOSTS", "CSRF_TRUSTED_ORIGINS", "BEHIND_HTTPS_PROXY", "MANA_LLM_ADMIN_KEY"} <= set(production)
    server = Server(tmp_path, {**NO_SECRET, **production})
    result = server.manage("check", "--deploy", "--fail-level", "WARNING", check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues" in result.stdout
    # Not silenced, only run against the stack that runs: drop the proxy settings and they show.
    plain = Server(tmp_path, {**NO_SECRET, **production, "BEHIND_HTTPS_PROXY": "0"})
    result = plain.manage("check", "--deploy", "--fail-level", "WARNING", check=False)
    assert result.returncode != 0
    for check_id in ("manallm.security.W008", "manallm.security.W016", "security.W010"):
        assert check_id in result.stderr, result.stderr


def test_the_running_stack_checks_see_a_missing_wrapper(settings):
    def ids(**overrides):
        with override_settings(**overrides):
            return {message.id for message in check_running_stack_deploy(None) + check_running_stack(None)}

    assert "manallm.security.W001" not in ids()
    without_security = [path for path in settings.MIDDLEWARE if not path.endswith(".SecurityMiddleware")]
    assert "manallm.security.W001" in ids(MIDDLEWARE=without_security)
    without_browser = [path for path in settings.MIDDLEWARE if not path.endswith(".BrowserStackMiddleware")]
    assert {"manallm.security.W002", "manallm.security.W003", "manallm.axes.W002"} <= ids(MIDDLEWARE=without_browser)


PROXY_ENV = {**readme_production_env(), "ALLOWED_HOSTS": "127.0.0.1,llm.example.com", "MANA_LLM_API_KEY": ""}
HTTPS = {"X-Forwarded-Proto": "https"}


def test_behind_an_https_proxy(make_server, fake):
    server = make_server(PROXY_ENV, name="proxy")
    create_staff(server, "root", "the right password")
    with httpx.Client(base_url=server.url, timeout=20) as client:
        page = client.get("/admin/login/", headers=HTTPS)
        assert page.status_code == 200
        assert page.headers["strict-transport-security"] == "max-age=31536000; includeSubDomains; preload"
        assert page.headers["x-frame-options"] == "DENY"
        assert page.headers["x-content-type-options"] == "nosniff"
        assert page.headers["referrer-policy"] == "same-origin"
        assert page.headers["cross-origin-opener-policy"] == "same-origin"
        assert "secure" in page.headers["set-cookie"].lower()

        plain = client.get("/v1/models")
        assert plain.status_code == 301 and plain.headers["location"].startswith("https://")
        for path in ("/health", "/metrics"):  # probed directly over HTTP: never redirected
            assert client.get(path).status_code == 200

        token = page.cookies["csrftoken"]
        form = {"username": "root", "password": "the right password", "csrfmiddlewaretoken": token}
        cookie = {"Cookie": f"csrftoken={token}", **HTTPS}
        foreign = client.post("/admin/login/", data=form, headers={**cookie, "Origin": "https://evil.example.com"})
        assert foreign.status_code == 403
        trusted = client.post("/admin/login/", data=form, headers={**cookie, "Origin": "https://llm.example.com"})
        assert trusted.status_code == 302 and "sessionid" in trusted.cookies


def test_admin_headers_on_a_default_install(make_server, fake):
    server = make_server(name="headers")
    page = httpx.get(f"{server.url}/admin/login/")
    assert page.status_code == 200
    assert page.headers["x-frame-options"] == "DENY"
    assert page.headers["x-content-type-options"] == "nosniff"
    assert page.headers["referrer-policy"] == "same-origin"
    assert page.headers["cross-origin-opener-policy"] == "same-origin"
    assert "strict-transport-security" not in page.headers  # plain HTTP, no proxy: no HSTS
    assert httpx.get(f"{server.url}/v1/models").status_code == 200  # and no redirect


# --- 6. credentials in upstream URLs -----------------------------------------------------------


def test_upstream_url_credentials_never_show(make_server, fake):
    dead = unused_port()
    server = make_server({"OLLAMA_URL": f"https://user:secret@127.0.0.1:{dead}/v1?key=abc&sig=s1gnature"},
                         name="urls")
    leaks = ("user:secret", "secret@", "key=abc", "s1gnature", "?key")
    with httpx.Client(base_url=server.url, timeout=20) as client:
        failed = client.post("/v1/chat/completions", json=chat("ollama/qwen2.5:7b"))
        assert_error(failed, 503, "no_healthy_provider")
        embed = client.post("/v1/embeddings", json={"model": "ollama/nomic-embed-text", "input": "x"})
        assert embed.status_code == 503
        health = client.get("/v1/health").json()["providers"]["ollama"]
        assert health["last_error"] and f"127.0.0.1:{dead}" in health["last_error"]
        assert wait_for(lambda: f"127.0.0.1:{dead}" in server.logs())
        texts = {"503": failed.text + embed.text, "/v1/health": str(health), "log": server.logs(),
                 "/metrics": client.get("/metrics").text}
    for where, text in texts.items():
        for leak in leaks:
            assert leak not in text, f"{leak!r} in {where}"


@pytest.mark.parametrize("text, expected", [
    ("GET https://user:secret@h.example:8443/v1/models?key=abc failed",
     "GET https://h.example:8443/v1/models failed"),
    ("for url 'http://a:p@ss@h.example/x?y=1#frag' (404)", "for url 'http://h.example/x' (404)"),
    ("connect to HTTPS://U:P@H.EXAMPLE refused", "connect to HTTPS://H.EXAMPLE refused"),
    ("http://h.example/v1 is fine", "http://h.example/v1 is fine"),
])
def test_redact_urls_in_clean_error_and_scrub(text, expected):
    assert redact_urls(text) == expected
    assert clean_error(text) == expected
    assert Provider("p", base_url="https://u:pw@h.example/v1?key=abc").scrub(text) == expected
    assert "pw" not in repr(Provider("p", base_url="https://u:pw@h.example/v1?key=abc"))
