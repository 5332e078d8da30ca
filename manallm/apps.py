from django.apps import AppConfig


class ManallmConfig(AppConfig):
    """The project's own wiring: the handler's entry hook and the guard on its Django fork."""

    name = "manallm"
    verbose_name = "manallm"

    def ready(self) -> None:
        from django.core import checks
        from django.core.signals import request_started

        from .checks import check_running_stack, check_running_stack_deploy
        from .handler import check_fork, on_request_started

        checks.register(check_fork, checks.Tags.compatibility)
        checks.register(check_running_stack, checks.Tags.security)
        checks.register(check_running_stack_deploy, checks.Tags.security, deploy=True)
        # Here rather than in get_asgi_application(): the async test client enters here too.
        request_started.connect(on_request_started)
