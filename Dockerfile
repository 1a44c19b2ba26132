# autopush-flask: one image for both node types.
#   connection node (default): docker run IMAGE
#   endpoint node:             docker run IMAGE gunicorn -c gunicorn.conf.py wsgi:endpoint_app
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

WORKDIR /app
RUN useradd --system --home /app autopush

COPY requirements.txt ./
RUN pip install --no-cache-dir -r requirements.txt

COPY autopush_flask ./autopush_flask
COPY wsgi.py gunicorn.conf.py ./
COPY scripts ./scripts
ARG BUILD=docker
RUN python scripts/write-version-json "$BUILD"

USER autopush
# 8080: WebSocket (public), 8082: endpoint API (public), 8081: the connection
# node's private router (+1 per worker). Expose the router only to the other
# nodes (container-to-container); never publish it to the internet, whatever
# its request signatures (see "Security model" in README.md).
EXPOSE 8080 8081 8082
CMD ["gunicorn", "-c", "gunicorn.conf.py", "wsgi:connection_app"]
