"""A single-file Django project with stanchion: a limit on every request
(middleware), a stricter one on a view, on an async view and on a
class-based view.

Run:  python examples/django_app.py runserver     (http://127.0.0.1:8000)
      python examples/django_app.py check         (validates STANCHION)
"""

from __future__ import annotations

import os
import sys

import django
from django.conf import settings

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
        "TRUSTED_PROXIES": [
            p for p in os.environ.get("TRUSTED_PROXIES", "").split(",") if p
        ],
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
    path("upload", Upload.as_view()),
    path("health", health),
]

if __name__ == "__main__":
    from django.core.management import execute_from_command_line

    argv = sys.argv if len(sys.argv) > 1 else [sys.argv[0], "runserver"]
    if argv[1] == "runserver" and len(argv) == 2:
        argv = [*argv, "--noreload", "127.0.0.1:8000"]
    execute_from_command_line(argv)
