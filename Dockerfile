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
EXPOSE 8080 8081 8082
CMD ["gunicorn", "-c", "gunicorn.conf.py", "wsgi:connection_app"]
