"""A single-file Django project with stanchion: a limit on every request
(middleware), a stricter one on a view, on an async view and on a
class-based view, a penalty box for clients that keep breaking the
limits, and a queue for bursts on a slow report.

Run:  python examples/django_app.py runserver     (http://127.0.0.1:8000)
      python examples/django_app.py check         (validates STANCHION)
"""

from __future__ import annotations

import os
import sys
import time

import django
from django.conf import settings


def env_list(name: str) -> list[str]:
    return [v for v in os.environ.get(name, "").split(",") if v]


settings.configure(
    DEBUG=False,
    SECRET_KEY="example-only-not-secret",
    ROOT_URLCONF=__name__,
    ALLOWED_HOSTS=["127.0.0.1", "localhost"],
    INSTALLED_APPS=["stanchion.django"],  # enables the STANCHION system check
    MIDDLEWARE=["stanchion.django.RateLimitMiddleware"],
    STANCHION={
        "LIMIT": "60/minute",
        "EXEMPT_PATHS": ["/health"],
        "TRUSTED_PROXIES": env_list("TRUSTED_PROXIES"),
        # A client refused more than 3 times within a minute by one of
        # these limits is banned from it for 5 minutes (403 with
        # Retry-After), each ban in a row twice as long, at most a day.
        "PENALTY": {"after": 3, "within": 60, "ban": 300, "max_ban": 86400},
        # Addresses and CIDR blocks never limited / always refused (403).
        "ALLOW": env_list("ALLOW"),
        "DENY": env_list("DENY"),
    },
)
django.setup()

from django.http import HttpRequest, HttpResponse, JsonResponse  # noqa: E402
from django.urls import path  # noqa: E402
from django.utils.decorators import method_decorator  # noqa: E402
from django.views import View  # noqa: E402

from stanchion.django import ratelimit  # noqa: E402


def index(request: HttpRequest) -> HttpResponse:
    return JsonResponse({"hello": "world"})


@ratelimit("5/minute", scope="search")
def search(request: HttpRequest) -> HttpResponse:
    return JsonResponse({"results": []})


@ratelimit("5/minute", scope="search")  # shares the search buckets
async def search_async(request: HttpRequest) -> HttpResponse:
    return JsonResponse({"results": [], "async": True})


# 2 reports at once; 8 more wait their turn (10 s at most, else 503 with
# Retry-After).
@ratelimit("10/minute", scope="report", concurrency=2, queue=8, queue_timeout=10)
def report(request: HttpRequest) -> HttpResponse:
    time.sleep(0.5)  # a slow report
    return JsonResponse({"report": "ready"})


class Upload(View):
    @method_decorator(ratelimit("2/minute", scope="upload"))
    def get(self, request: HttpRequest) -> HttpResponse:
        return JsonResponse({"uploaded": False})


def health(request: HttpRequest) -> HttpResponse:
    return HttpResponse("ok")


urlpatterns = [
    path("", index),
    path("search", search),
    path("search-async", search_async),
    path("report", report),
    path("upload", Upload.as_view()),
    path("health", health),
]

if __name__ == "__main__":
    from django.core.management import execute_from_command_line

    argv = sys.argv if len(sys.argv) > 1 else [sys.argv[0], "runserver"]
    if argv[1] == "runserver" and len(argv) == 2:
        argv = [*argv, "--noreload", "127.0.0.1:8000"]
    execute_from_command_line(argv)
