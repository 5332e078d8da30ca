from . import admin_usage  # noqa: F401  (the Price admin; the consumers admin imports it too)
