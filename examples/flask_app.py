"""Flask with stanchion: a default limit, a stricter limit on login, a
blueprint limit, an exempt health check, a penalty box for clients that
keep breaking the limits, and a queue for bursts on a slow report.

Run:  python examples/flask_app.py        (serves http://127.0.0.1:5000)
Try:  for i in $(seq 8); do curl -s -o /dev/null -w "%{http_code}\n" -X POST http://127.0.0.1:5000/login; done
"""

from __future__ import annotations

import os
import time
from typing import Any

from flask import Blueprint, Flask, jsonify

from stanchion.flask import Stanchion

limits = Stanchion()
api = Blueprint("api", __name__, url_prefix="/api")


def env_list(name: str) -> list[str]:
    return [v for v in os.environ.get(name, "").split(",") if v]


@api.route("/items")
def items() -> Any:
    return jsonify(items=[1, 2, 3])


def create_app() -> Flask:
    app = Flask(__name__)
    app.config.update(
        STANCHION_DEFAULT_LIMIT="30/minute",
        STANCHION_TRUSTED_PROXIES=env_list("TRUSTED_PROXIES"),
        # A client refused more than 3 times within a minute by one of
        # these limits is banned from it for 5 minutes (403 with
        # Retry-After), each ban in a row twice as long, at most a day.
        STANCHION_PENALTY={"after": 3, "within": 60, "ban": 300, "max_ban": 86400},
        # Addresses and CIDR blocks never limited / always refused (403).
        STANCHION_ALLOW=env_list("ALLOW"),
        STANCHION_DENY=env_list("DENY"),
    )

    @app.route("/")
    def index() -> Any:
        return jsonify(hello="world")

    @app.route("/login", methods=["POST"])
    @limits.limit("3/minute")
    def login() -> Any:
        return jsonify(ok=True)

    @app.route("/report")
    # 2 reports at once; 8 more wait their turn (10 s at most, else 503
    # with Retry-After).
    @limits.limit("10/minute", concurrency=2, queue=8, queue_timeout=10)
    def report() -> Any:
        time.sleep(0.5)  # a slow report
        return jsonify(report="ready")

    @app.route("/health")
    @limits.exempt
    def health() -> Any:
        return "ok"

    limits.limit_blueprint(api, "100/minute")
    app.register_blueprint(api)
    limits.init_app(app)
    return app


app = create_app()

if __name__ == "__main__":
    app.run(host="127.0.0.1", port=int(os.environ.get("PORT", "5000")), threaded=True)
