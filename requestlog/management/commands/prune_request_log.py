"""python manage.py prune_request_log [--days N] (README#request-log)."""
from django.core.management.base import BaseCommand

from requestlog.models import RequestLogEntry


class Command(BaseCommand):
    help = "Delete request-log rows older than REQUEST_LOG_DAYS (also run hourly by probe_providers)."

    def add_arguments(self, parser):
        parser.add_argument("--days", type=float, default=None, help="keep this many days (REQUEST_LOG_DAYS)")

    def handle(self, *args, days=None, **options):
        deleted = RequestLogEntry.objects.prune(days)
        self.stdout.write(f"deleted {deleted} request-log rows")
