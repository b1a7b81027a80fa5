"""The base of stanchion's Django middleware: sync and async capable,
as Django's own middleware are. Django hands each one the next handler;
when that is a coroutine function (under ASGI) the middleware marks
itself one too, so Django awaits it with no thread hop, and its
``__call__`` passes the request to its ``__acall__``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.http import HttpRequest

__all__ = ["SyncAndAsyncMiddleware"]


class SyncAndAsyncMiddleware:
    """Keeps ``get_response`` and, in ``async_mode``, marks the instance
    a coroutine function. Each subclass's ``__call__`` starts with
    ``if self.async_mode: return self.__acall__(request)``: kept inline
    there, since a call made from here would cost every request one more
    Python call."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        self.get_response = get_response
        self.async_mode = iscoroutinefunction(get_response)
        if self.async_mode:
            # (Each subclass defines __call__.)
            markcoroutinefunction(cast("Callable[..., Any]", self))
