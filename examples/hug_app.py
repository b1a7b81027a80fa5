"""hug with stanchion (hug 2.6.1 runs on Python 3.10 to 3.12): a limit
for the whole API and a stricter one on one endpoint.

Run:  python examples/hug_app.py          (serves http://127.0.0.1:8000)
Try:  curl -i "http://127.0.0.1:8000/greet?name=ann"
"""

import os
import warnings

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)  # falcon 2 imports cgi
    import hug

from stanchion.hug import RateLimitMiddleware, limit

api = hug.API(__name__)
api.http.add_middleware(
    RateLimitMiddleware(limit="60/minute", exempt_paths=["/health"])
)


@hug.get("/greet")
@limit("5/minute")
def greet(name: hug.types.text, times: hug.types.number = 1):
    """Greets someone, at most 5 times a minute per client"""
    return {"greeting": " ".join([f"hello {name}"] * times)}


@hug.get("/health")
def health():
    return "ok"


if __name__ == "__main__":
    from wsgiref.simple_server import make_server

    port = int(os.environ.get("PORT", "8000"))
    with make_server("127.0.0.1", port, api.http.server()) as server:
        print(f"serving on http://127.0.0.1:{port}")
        server.serve_forever()
