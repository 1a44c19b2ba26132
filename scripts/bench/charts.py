"""The benchmarks' PNG charts: one size and one way to write them (matplotlib, a dev dependency).

Imported only when a chart is asked for, so the benchmarks run without matplotlib.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

SIZE_INCHES = (6.4, 3.6)
DPI = 100


def new_chart() -> tuple[Any, Any]:
    """A figure and its axes, drawn off-screen."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=SIZE_INCHES, dpi=DPI)


def save_chart(figure: Any, directory: Path, name: str) -> Path:
    """``directory/name``, created if needed; the figure is closed."""
    import matplotlib.pyplot as plt

    figure.tight_layout()
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    figure.savefig(path)
    plt.close(figure)
    return path
