"""The floor of the stack: a bare gevent-websocket echo app (for benchmarks)."""


def app(environ, start_response):
    websocket = environ.get("wsgi.websocket")
    if websocket is None:
        start_response("400 Bad Request", [("Content-Type", "text/plain")])
        return [b"websocket only"]
    while True:
        message = websocket.receive()
        if message is None:
            return []
        websocket.send(message)
