from django.apps import AppConfig


class HealthConfig(AppConfig):
    name = "health"
    verbose_name = "Health (circuit breakers)"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from manallm import background, metrics
        from providers import registry

        from .board import breakers

        def install_gauges() -> None:
            metrics.install(breakers, registry.configured())

        # Every serving process keeps the breaker board in memory, loaded and polled,
        # and the health gauges follow it from the moment it is loaded.
        background.register(breakers)
        background.on_start(install_gauges)
