"""Flask with stanchion: a default limit, a stricter limit on login, a
blueprint limit, and an exempt health check.

Run:  python examples/flask_app.py        (serves http://127.0.0.1:5000)
Try:  for i in 1 2 3 4; do curl -s -o /dev/null -w "%{http_code}\n" -X POST http://127.0.0.1:5000/login; done
"""

from __future__ import annotations

import os
from typing import Any

from flask import Blueprint, Flask, jsonify

from stanchion.flask import Stanchion

limits = Stanchion()
api = Blueprint("api", __name__, url_prefix="/api")


@api.route("/items")
def items() -> Any:
    return jsonify(items=[1, 2, 3])


def create_app() -> Flask:
    app = Flask(__name__)
    app.config.update(
        STANCHION_DEFAULT_LIMIT="30/minute",
        STANCHION_TRUSTED_PROXIES=[
            p for p in os.environ.get("TRUSTED_PROXIES", "").split(",") if p
        ],
    )

    @app.route("/")
    def index() -> Any:
        return jsonify(hello="world")

    @app.route("/login", methods=["POST"])
    @limits.limit("3/minute")
    def login() -> Any:
        return jsonify(ok=True)

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
    app.run(host="127.0.0.1", port=int(os.environ.get("PORT", "5000")))
