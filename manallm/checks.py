"""System checks against the middleware stack as it runs (README#exposing-manallm).

Django's deploy checks (and axes') look for middleware by dotted path at the top level
of MIDDLEWARE; manallm runs the security, session, CSRF, X-Frame-Options and axes
middleware inside async-native wrappers instead (manallm.middleware), each naming what
it runs in ``runs``. Those checks are silenced in settings and run here, unchanged, with
MIDDLEWARE expanded to what actually runs, so each still fails when its concern is not
met: a wrapper dropped from MIDDLEWARE, HSTS unset, cookies not secure… Their messages
keep Django's text under the id ``manallm.<Django's id>``.
"""
from collections.abc import Callable, Iterable

from django.conf import settings
from django.core.checks import CheckMessage
from django.test.utils import override_settings
from django.utils.module_loading import import_string

# The checks whose outcome depends on settings.MIDDLEWARE's dotted paths.
DEPLOY_CHECKS = (
    "django.core.checks.security.base.check_security_middleware",
    "django.core.checks.security.base.check_xframe_options_middleware",
    "django.core.checks.security.base.check_sts",
    "django.core.checks.security.base.check_sts_include_subdomains",
    "django.core.checks.security.base.check_sts_preload",
    "django.core.checks.security.base.check_content_type_nosniff",
    "django.core.checks.security.base.check_ssl_redirect",
    "django.core.checks.security.base.check_xframe_deny",
    "django.core.checks.security.base.check_referrer_policy",
    "django.core.checks.security.base.check_cross_origin_opener_policy",
    "django.core.checks.security.csrf.check_csrf_middleware",
    "django.core.checks.security.csrf.check_csrf_cookie_secure",
)
CHECKS = ("axes.checks.axes_middleware_check",)


def effective_middleware() -> list[str]:
    """settings.MIDDLEWARE with every wrapper replaced by the dotted paths it runs."""
    expanded = []
    for path in settings.MIDDLEWARE:
        expanded.extend(getattr(import_string(path), "runs", (path,)))
    return expanded


def _run(checks: Iterable[str], app_configs, **kwargs) -> list[CheckMessage]:
    functions: list[Callable] = [import_string(path) for path in checks]
    with override_settings(MIDDLEWARE=effective_middleware()):
        messages = [message for check in functions for message in check(app_configs, **kwargs)]
    return [CheckMessage(m.level, m.msg, hint=m.hint, obj=m.obj, id=f"manallm.{m.id}") for m in messages]


def check_running_stack_deploy(app_configs, **kwargs) -> list[CheckMessage]:
    """``check --deploy``: Django's middleware-dependent security checks, on the running stack."""
    return _run(DEPLOY_CHECKS, app_configs, **kwargs)


def check_running_stack(app_configs, **kwargs) -> list[CheckMessage]:
    """Every ``check``: axes' middleware check, on the running stack."""
    return _run(CHECKS, app_configs, **kwargs)
