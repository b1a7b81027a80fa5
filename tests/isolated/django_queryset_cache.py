"""Lazy QuerySets stored through the a* methods of stanchion's Django
cache backend, against a real SQLite database, beside LocMemCache.

Django's settings are configured once per process and the rest of the
suite configures them without a database, so this runs in its own
process. Prints one JSON line: what each backend gave back.
"""

from __future__ import annotations

import asyncio
import json
import sys

import django
from django.conf import settings

settings.configure(
    DATABASES={
        # A file, not :memory:: Django runs sync work from an event loop
        # in another thread, with its own connection.
        "default": {"ENGINE": "django.db.backends.sqlite3", "NAME": sys.argv[1]}
    },
    INSTALLED_APPS=["django.contrib.contenttypes"],
    CACHES={
        "stanchion": {"BACKEND": "stanchion.django.CacheBackend", "LOCATION": "qs"},
        "locmem": {
            "BACKEND": "django.core.cache.backends.locmem.LocMemCache",
            "LOCATION": "qs",
        },
    },
    USE_TZ=True,
)
django.setup()

from django.core.cache import caches  # noqa: E402
from django.db import connection, models  # noqa: E402


class Note(models.Model):
    text = models.CharField(max_length=20)

    class Meta:
        app_label = "contenttypes"


with connection.schema_editor() as editor:
    editor.create_model(Note)
Note.objects.bulk_create([Note(text=t) for t in ("apple", "banana", "avocado")])
connection.close()


def texts(notes: object) -> list[str]:
    return sorted(n.text for n in notes)  # type: ignore[attr-defined]


async def exercise(alias: str) -> dict[str, object]:
    cache = caches[alias]
    starting_with_a = Note.objects.filter(text__startswith="a")
    await cache.aset("a-notes", starting_with_a)
    added = await cache.aadd("all", Note.objects.all())
    await cache.aset_many({"ordered": Note.objects.order_by("-text")})
    made = await cache.aget_or_set("made", lambda: Note.objects.filter(text="banana"))
    return {
        "a-notes": texts(await cache.aget("a-notes")),
        "added": added,
        "all": texts(await cache.aget("all")),
        "ordered": [n.text for n in (await cache.aget_many(["ordered"]))["ordered"]],
        "made": texts(made),
        "plain": await cache.aset("plain", "text") or await cache.aget("plain"),
    }


async def main() -> None:
    out = {alias: await exercise(alias) for alias in ("stanchion", "locmem")}
    print(json.dumps(out))


asyncio.run(main())
