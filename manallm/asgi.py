"""ASGI entry point, served by daphne (channels' ProtocolTypeRouter for HTTP)."""
import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "manallm.settings")

from channels.routing import ProtocolTypeRouter  # noqa: E402
from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler  # noqa: E402

from manallm.handler import get_asgi_application  # noqa: E402

# Django's own static handler serves the admin's files from the apps (no collectstatic
# step); every other path passes straight through to Django.
django_application = ASGIStaticFilesHandler(get_asgi_application())

from routing.reload import install_sighup  # noqa: E402

install_sighup()

application = ProtocolTypeRouter({"http": django_application})
