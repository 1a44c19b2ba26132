"""The PostgreSQL backend (``AUTOPUSH_DB_URL``): one database, versioned schema."""

from autopush_flask.db.postgres.storage import PostgresStorage

__all__ = ["PostgresStorage"]
