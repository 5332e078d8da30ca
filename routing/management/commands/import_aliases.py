from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from routing import aliasfile
from routing.models import recorded
from routing.validators import AliasError


class Command(BaseCommand):
    help = "Sync an aliases YAML file into the database in one transaction."

    def add_arguments(self, parser):
        parser.add_argument("path", nargs="?", help="the YAML file (default: ALIASES_FILE)")
        parser.add_argument("--dry-run", action="store_true", help="print the diff and write nothing")
        parser.add_argument("--prune", action="store_true", help="delete aliases that are not in the file")

    def handle(self, *args, path=None, dry_run=False, prune=False, **options):
        path = path or settings.ALIASES_FILE
        try:
            with recorded("import_aliases"):  # the alias history's actor (README#alias-history)
                result = aliasfile.sync(path, prune=prune, dry_run=dry_run)
        except AliasError as exc:
            raise CommandError(f"{path}: {exc}; nothing was written") from exc
        for line in result.lines():
            self.stdout.write(line)
        prefix = "dry run, nothing written: would have " if dry_run else ""
        self.stdout.write(f"{prefix}{result.summary()}")
