import sys

from django.core.management.base import BaseCommand

from routing import aliasfile


class Command(BaseCommand):
    help = "Write the database's aliases as YAML (the import schema)."

    def add_arguments(self, parser):
        parser.add_argument("path", nargs="?", help="output file (default: standard output)")

    def handle(self, *args, path=None, **options):
        if path is None:
            aliasfile.dump(sys.stdout)
            return
        with open(path, "w", encoding="utf-8") as stream:
            aliasfile.dump(stream)
        self.stderr.write(f"wrote {path}")
