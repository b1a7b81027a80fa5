"""Django app config: add ``"stanchion.django"`` to ``INSTALLED_APPS`` to
have ``manage.py check`` report bad ``STANCHION`` settings."""

from __future__ import annotations

from django.apps import AppConfig


class StanchionConfig(AppConfig):  # type: ignore[misc]
    name = "stanchion.django"
    label = "stanchion"
    verbose_name = "stanchion rate limits"

    def ready(self) -> None:
        from . import check_settings  # noqa: F401  (registers the check)
