"""The floor of the endpoint node: a bare Flask view answering 201 (for benchmarks).

Same URL shape as ``POST /wpush/<api_version>/<token>`` so routing costs the
same; no token, VAPID, storage or node work.

    gunicorn -c gunicorn.conf.py --worker-class gevent scripts.bench.flask_floor:app

``GET /__lbheartbeat__`` is there only so start-up probes see the worker is up.
"""

from flask import Flask, Response

app = Flask(__name__)


@app.post("/wpush/<api_version>/<token>")
def push(api_version: str, token: str) -> Response:
    return Response(b"", status=201)


@app.get("/__lbheartbeat__")
def heartbeat() -> Response:
    return Response(b"", status=200)
