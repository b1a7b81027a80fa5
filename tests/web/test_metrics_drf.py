"""stanchion.metrics through Django REST framework throttles (a real DRF
view, DRF's request factory, a real prometheus_client registry)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import prometheus_client
import pytest

from ._respcache_apps import _django_ready

_django_ready()

from django.core.cache import cache as django_cache  # noqa: E402
from django.test import override_settings  # noqa: E402
from rest_framework.response import Response  # noqa: E402
from rest_framework.test import APIRequestFactory  # noqa: E402
from rest_framework.views import APIView  # noqa: E402

import stanchion.metrics as metrics  # noqa: E402
from stanchion import drf  # noqa: E402

from .test_metrics import samples  # noqa: E402


@pytest.fixture(autouse=True)
def project() -> Iterator[None]:
    metrics.disable()
    django_cache.clear()
    rest = {
        "UNAUTHENTICATED_USER": None,
        "DEFAULT_AUTHENTICATION_CLASSES": [],
        "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
        "DEFAULT_THROTTLE_RATES": {"metered": "2/minute"},
    }
    with override_settings(REST_FRAMEWORK=rest, STANCHION={}):
        yield
    metrics.disable()
    django_cache.clear()


class Metered(drf.ScopedRateThrottle):
    pass


class MeteredView(APIView):  # type: ignore[misc]
    authentication_classes: list[Any] = []
    throttle_classes = [Metered]
    throttle_scope = "metered"

    def get(self, request: Any) -> Response:
        return Response({"ok": True})


def test_drf_throttle_decisions_are_counted() -> None:
    reg = prometheus_client.CollectorRegistry()
    metrics.enable(prometheus_registry=reg)
    breaches: list[metrics.DecisionEvent] = []
    metrics.on_breach(breaches.append)
    before = samples(reg)
    view = MeteredView.as_view()
    factory = APIRequestFactory()
    codes = [
        view(factory.get("/m", REMOTE_ADDR="192.0.2.30")).status_code for _ in range(4)
    ]
    assert codes == [200, 200, 429, 429]
    after = samples(reg)
    added = {
        k: v - before.get(k, 0)
        for k, v in after.items()
        if k.startswith("stanchion_decisions_total") and v != before.get(k, 0)
    }
    assert added == {
        'stanchion_decisions_total{outcome="allowed",scope="metered"}': 2.0,
        'stanchion_decisions_total{outcome="denied",scope="metered"}': 2.0,
    }
    assert len(breaches) == 2 and breaches[0].path == "/m"
