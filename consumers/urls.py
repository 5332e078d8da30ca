from rest_framework.routers import SimpleRouter

from . import api

# The management API (README#consumers): DRF's router, no trailing slash as in /v1.
management = SimpleRouter(trailing_slash=False)
management.register("v1/consumers", api.ConsumerViewSet, basename="consumer")

urlpatterns = management.urls
