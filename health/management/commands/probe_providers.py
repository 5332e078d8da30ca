"""python manage.py probe_providers [--once] [--interval 30] [--timeout 3] (README#commands).

Beside the probe loop it runs the chores apps registered with manallm.housekeeping
(the request log's hourly prune): the prober is the one long-lived process of a
deployment that is not serving requests. ``--once`` runs each chore once too.
"""
import asyncio

from django.core.management.base import BaseCommand, CommandError


def positive_float(value):
    number = float(value)
    if number <= 0:
        raise ValueError(value)
    return number


class Command(BaseCommand):
    help = "Probe every configured provider each tick and record the results in the breaker state."
    # A long-running daemon: no URL/admin system checks at start (they need nothing here).
    requires_system_checks = []

    def add_arguments(self, parser):
        parser.add_argument("--once", action="store_true", help="run one tick, print a line per provider, exit 0")
        parser.add_argument("--interval", type=positive_float, default=30.0, help="seconds between ticks (30)")
        parser.add_argument("--timeout", type=positive_float, default=3.0, help="seconds one probe may take (3)")

    def handle(self, *args, once=False, interval=30.0, timeout=3.0, **options):
        from health import probe

        report = (lambda result: self.stdout.write(result.summary())) if once else None
        try:
            asyncio.run(self.run(probe.main(once=once, interval=interval, timeout=timeout, report=report), once))
        except KeyboardInterrupt:
            pass
        except Exception as exc:  # pragma: no cover - a setup error (database, settings)
            raise CommandError(f"probe_providers failed: {exc}") from exc

    @staticmethod
    async def run(probing, once: bool) -> None:
        """The probe loop with the housekeeping chores beside it, stopped with it."""
        from manallm import housekeeping

        if once:
            await probing
            for chore in housekeeping.chores():
                await housekeeping.run_once(chore)
            return
        chores = asyncio.ensure_future(housekeeping.run_forever())
        try:
            await probing
        finally:
            chores.cancel()
            await asyncio.gather(chores, return_exceptions=True)
