"""hug with stanchion (hug 2.6.1 runs on Python 3.10 to 3.12): a users
API with more traffic for paying clients than for free ones, a rate
limit, a queue for bursts, a penalty box, and answers cached for an
hour.

Run:  python examples/hug_app.py          (serves http://127.0.0.1:8000)
Try:  curl -i http://127.0.0.1:8000/users
      curl -i -H "X-API-Key: paid-demo" http://127.0.0.1:8000/user/1
"""

import os
import warnings

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)  # falcon 2 imports cgi
    import hug

from stanchion import Penalty
from stanchion.http import Plans, api_key
from stanchion.hug import RateLimitMiddleware, cache, limit

USERS = {
    1: {"id": 1, "name": "Ada"},
    2: {"id": 2, "name": "Grace"},
    3: {"id": 3, "name": "Edsger"},
}
PAID_KEYS = {"paid-demo"}
# The API keys this service issued; any other key is limited like no key
# at all, per client address.
API_KEYS = PAID_KEYS | set(filter(None, os.environ.get("API_KEYS", "").split(",")))


def plan_of(request):
    return "paid" if request.header("x-api-key") in PAID_KEYS else "free"


api = hug.API(__name__)
api.http.add_middleware(
    RateLimitMiddleware(
        # Paying clients get ten times the traffic of free ones, counted
        # per API key (clients without a known key: per address).
        limit=Plans({"free": "60/minute", "paid": "600/minute"}, plan=plan_of),
        key=api_key("X-API-Key", valid=API_KEYS),
        exempt_paths=["/health"],
        # A burst waits its turn: 16 requests at once, 64 more queued (10 s
        # at most, else 503 with Retry-After).
        concurrency=16,
        queue=64,
        queue_timeout=10,
        # Refused more than 10 times within a minute: banned for a minute
        # (403 with Retry-After), each ban in a row twice as long.
        penalty=Penalty(after=10, within=60, ban=60, max_ban=3600),
    )
)


@hug.get("/users")
@cache(max_age=3600)  # Cache-Control: public, max-age=3600
def users():
    """Every user"""
    return list(USERS.values())


@hug.get("/user/{user_id}")
@limit("30/minute", key=api_key("X-API-Key", valid=API_KEYS))
@cache(max_age=3600)
def user(user_id: hug.types.number, response):
    """One user, at most 30 a minute per API key (or address)"""
    found = USERS.get(user_id)
    if found is None:
        response.status = hug.HTTP_404
        return {"error": "no such user"}
    return found


@hug.get("/health")
def health():
    return "ok"


if __name__ == "__main__":
    from wsgiref.simple_server import make_server

    port = int(os.environ.get("PORT", "8000"))
    with make_server("127.0.0.1", port, api.http.server()) as server:
        print(f"serving on http://127.0.0.1:{port}")
        server.serve_forever()
