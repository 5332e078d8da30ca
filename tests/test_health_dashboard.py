"""The health dashboard in the admin (README#health-dashboard) and the per-deployment reset.

A real gateway with every provider pointed at the fake upstream; deployment breakers
opened by real requests the fake answers 500. In a real browser (headless Chromium):
log in, open the dashboard, open a breaker, see it turn red within the page's own
refresh, reset it with the row's button, see it turn green. Screenshots go to the
test's temp directory.
"""
import httpx
import pytest

from tests.helpers import assert_error, chat, wait_for
from tests.server import module_gateway

ENV = {"RETRIES": "0", "BREAKER_FAILURE_THRESHOLD": "2", "GROQ_MAX_CONCURRENT": "7"}
gw = module_gateway("dashboard", **ENV)
DASHBOARD = "/admin/health/breaker/dashboard/"
RED, GREEN = "rgb(197, 34, 31)", "rgb(30, 142, 62)"
REFRESH_SECONDS = 3


def trip(server, fake, model):
    """Open groq/<model>'s deployment breaker: two failed attempts."""
    fake.fault("groq", model, status=500)
    for _ in range(2):
        assert httpx.post(f"{server.url}/v1/chat/completions", json=chat(f"groq/{model}"), timeout=10).status_code == 503
    fake.clear()


def deployments(server):
    return httpx.get(f"{server.url}/v1/health", timeout=10).json()["providers"]["groq"]["models"]


# --- the API ---------------------------------------------------------------------------------


def test_health_shows_the_cap(gw, fake):
    providers = httpx.get(f"{gw.url}/v1/health", timeout=10).json()["providers"]
    assert providers["groq"]["max_concurrent"] == 7
    assert providers["ollama"]["max_concurrent"] is None


def test_a_deployment_reset_closes_that_deployment_only(gw, fake):
    trip(gw, fake, "first")
    trip(gw, fake, "second")
    assert {deployments(gw)[m]["status"] for m in ("first", "second")} == {"unhealthy"}

    response = httpx.post(f"{gw.url}/v1/health/groq/reset", json={"model": "first"}, timeout=10)
    assert response.status_code == 200, response.text
    assert response.json()["models"]["first"]["status"] == "healthy"
    assert deployments(gw)["first"]["status"] == "healthy"
    assert deployments(gw)["second"]["status"] == "unhealthy"

    assert_error(httpx.post(f"{gw.url}/v1/health/groq/reset", json={"model": 7}, timeout=10), 400,
                 "invalid_request_error", param="model")
    assert_error(httpx.post(f"{gw.url}/v1/health/groq/reset", json={"model": "never-called\x00"}, timeout=10), 404,
                 "invalid_request_error", param="model")
    assert httpx.post(f"{gw.url}/v1/health/groq/reset", timeout=10).status_code == 200  # the whole provider
    assert deployments(gw)["second"]["status"] == "healthy"


def test_dashboard_needs_a_staff_login(gw):
    for path in (DASHBOARD, f"{DASHBOARD}state.json"):
        response = httpx.get(f"{gw.url}{path}", timeout=10)
        assert response.status_code == 302 and "/admin/login/" in response.headers["location"]


# --- in a real browser ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def staff(gw):
    gw.manage("shell", "-c", "from django.contrib.auth.models import User; "
                             "User.objects.create_superuser('root', 'root@example.com', 'pw-for-the-test')")
    return "root", "pw-for-the-test"


def badge(page, key):
    return page.locator(f'#health-table tr[data-key="{key}"] .breaker')


def colour_of(page, key):
    """The breaker badge's status and computed background colour, or None while the row is absent."""
    element = badge(page, key)
    if element.count() == 0:
        return None
    return element.get_attribute("data-status"), element.evaluate("e => getComputedStyle(e).backgroundColor")


def test_a_tripped_breaker_turns_red_then_reset_turns_it_green(gw, fake, staff, chromium, tmp_path):
    page = chromium.new_page()
    try:
        page.goto(f"{gw.url}/admin/login/?next={DASHBOARD}")
        page.fill("#id_username", staff[0])
        page.fill("#id_password", staff[1])
        page.click("input[type=submit]")
        page.wait_for_selector('#health-table tr[data-key="groq"]')
        assert colour_of(page, "groq") == ("healthy", GREEN)
        assert "0 / 7" in page.inner_text('#health-table tr[data-key="groq"] .in-flight')
        assert colour_of(page, "groq/dashboard-model") is None

        trip(gw, fake, "dashboard-model")  # no reload: the page's own refresh must show it
        assert wait_for(lambda: colour_of(page, "groq/dashboard-model") == ("unhealthy", RED),
                        timeout=REFRESH_SECONDS * 3), colour_of(page, "groq/dashboard-model")
        row = page.locator('#health-table tr[data-key="groq/dashboard-model"]')
        assert row.locator(".failures").inner_text() == "2"
        assert "http_500" in row.locator(".last-error").inner_text()
        assert row.locator(".half-open-in").inner_text().endswith(" s")
        page.screenshot(path=str(tmp_path / "dashboard-open.png"), full_page=True)

        row.locator("button.reset").click()
        assert wait_for(lambda: colour_of(page, "groq/dashboard-model") == ("healthy", GREEN),
                        timeout=REFRESH_SECONDS * 3), colour_of(page, "groq/dashboard-model")
        assert deployments(gw)["dashboard-model"]["status"] == "healthy"  # closed on the server, not only drawn
        assert "Reset groq/dashboard-model." in page.inner_text("#health-message")
        page.screenshot(path=str(tmp_path / "dashboard-reset.png"), full_page=True)
    finally:
        page.close()
