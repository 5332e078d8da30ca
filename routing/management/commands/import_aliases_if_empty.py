from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand

from routing.models import Alias


class Command(BaseCommand):
    help = "Import ALIASES_FILE only when the alias table is empty (first start)."

    def handle(self, *args, **options):
        if Alias.objects.exists():
            self.stdout.write("aliases present; not importing")
            return
        call_command("import_aliases", settings.ALIASES_FILE, stdout=self.stdout, stderr=self.stderr)
