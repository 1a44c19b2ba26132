# autopush-flask: one image for both node types.
#   connection node (default): docker run IMAGE
#   endpoint node:             docker run IMAGE gunicorn -c gunicorn.conf.py wsgi:endpoint_app
#   build with provenance:     docker build --build-arg COMMIT=$(git rev-parse HEAD) \
#                                --build-arg SOURCE=https://example.org/autopush-flask \
#                                --build-arg BUILD=<CI build URL or number> -t autopush-flask .
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

WORKDIR /app
RUN useradd --system --home /app autopush

# requirements.txt pins every package with its hashes: pip verifies them.
COPY requirements.txt ./
RUN pip install --no-cache-dir -r requirements.txt

COPY autopush_flask ./autopush_flask
COPY wsgi.py gunicorn.conf.py ./
COPY scripts ./scripts
COPY deploy/healthcheck.py ./deploy/

# version.json, served at /__version__: the build context has no .git, so the
# commit and the source come from the build, not from git.
ARG COMMIT=unknown
ARG SOURCE=autopush-flask
ARG BUILD=docker
RUN python scripts/write-version-json "$BUILD" --commit "$COMMIT" --source "$SOURCE"

USER autopush
# 8080: WebSocket (public), 8082: endpoint API (public), 8081: the connection
# node's private router (+1 per worker). Expose the router only to the other
# nodes (container-to-container); never publish it to the internet, whatever
# its request signatures (see "Security model" in docs/operations.md).
EXPOSE 8080 8081 8082

# TERM is gunicorn's graceful stop: connection workers store their clients'
# unacknowledged notifications and close them within graceful_timeout (25 s,
# gunicorn.conf.py). Docker kills after 10 s by default: give the container
# longer (`docker stop --time 35`, `docker run --stop-timeout 35`, compose's
# stop_grace_period: 35s, Kubernetes' terminationGracePeriodSeconds).
STOPSIGNAL SIGTERM

# Liveness of whichever node this container runs (deploy/healthcheck.py reads
# its gunicorn command for the port). start-period covers table creation.
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "deploy/healthcheck.py"]

CMD ["gunicorn", "-c", "gunicorn.conf.py", "wsgi:connection_app"]
