"""autopush-flask: a Web Push service (connection nodes, endpoint nodes, bridges)."""

__version__ = "0.1.0"
