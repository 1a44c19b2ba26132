"""autopush-flask: a Web Push service (connection nodes, endpoint nodes, bridges)."""

# The one place the version is written: pyproject.toml reads it from here
# (setuptools' `attr:`), as do version.json (scripts/write-version-json), the
# logs, Sentry and the OpenAPI document. Kept a literal, not read from package
# metadata, because the Docker image runs the package without installing it.
__version__ = "0.1.0"
