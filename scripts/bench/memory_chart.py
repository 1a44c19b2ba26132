#!/usr/bin/env python3
"""RSS per client against the number of clients, for the connection node and its floor, as a PNG.

Runs ``scripts/bench/connections.py --clients N`` once for each N asked for
and reads the figures it prints (the ``floor ...: X KiB/client`` and
``connection node ...: Y KiB/client`` lines), so it depends on that script's
output only, not on its internals. Then plots both lines against N.

    .venv/bin/python scripts/bench/memory_chart.py [--clients 1000,2000,5000]
        [--registers 2] [--chart DIR]

Writes ``DIR/memory_per_client.png`` (default ``docs/images``; matplotlib, a
dev dependency, Agg backend) and prints a table of the figures. A run of
connections.py that fails stops the script with its output (exit 1).
``--from FILE`` re-draws the chart from the JSON figures a previous run
saved next to the chart (``memory_per_client.json``), without measuring.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CONNECTIONS = ROOT / "scripts" / "bench" / "connections.py"
# The lines of connections.py's summary this reads (its format as of this script).
FLOOR_LINE = re.compile(r"^floor\b.*?(\d+(?:\.\d+)?) KiB/client", re.MULTILINE)
SERVICE_LINE = re.compile(r"^connection node\b.*?(\d+(?:\.\d+)?) KiB/client", re.MULTILINE)
RUN_TIMEOUT_SECONDS = 1800


class ChartError(Exception):
    """A measurement failed or printed nothing this script understands."""


def measure(clients: int, registers: int) -> dict[str, float]:
    """One connections.py run; its floor and service KiB per client."""
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, str(CONNECTIONS), "--clients", str(clients), "--registers", str(registers)],
        capture_output=True, text=True, timeout=RUN_TIMEOUT_SECONDS, cwd=ROOT,
    )
    output = done.stdout
    floor, service = FLOOR_LINE.search(output), SERVICE_LINE.search(output)
    if done.returncode != 0 or floor is None or service is None:
        raise ChartError(f"connections.py --clients {clients} exited {done.returncode}; "
                         f"output:\n{output[-2000:]}\n{done.stderr[-2000:]}")
    return {"clients": clients, "floor_kib": float(floor.group(1)), "service_kib": float(service.group(1)),
            "seconds": time.monotonic() - started, "load": os.getloadavg()[0]}


def draw(points: list[dict[str, float]], registers: int, directory: Path) -> Path:
    from scripts.bench.charts import new_chart, save_chart

    points = sorted(points, key=lambda point: point["clients"])
    counts = [point["clients"] for point in points]
    figure, axes = new_chart()
    axes.plot(counts, [point["service_kib"] for point in points], "o-",
              label=f"connection node (hello + {registers} registers)")
    axes.plot(counts, [point["floor_kib"] for point in points], "s--", label="floor: bare gevent-websocket echo")
    axes.set_xlabel("idle clients on one worker")
    axes.set_ylabel("worker RSS growth per client, KiB")
    highest = max(max(point["service_kib"], point["floor_kib"]) for point in points)
    axes.set_ylim(0, highest * 1.2)  # room for the legend above the lines
    axes.set_xticks(counts)
    axes.grid(True, linewidth=0.3)
    axes.set_title("Connection worker memory per client", fontsize=10)
    axes.legend(fontsize=8, loc="upper right")
    return save_chart(figure, directory, "memory_per_client.png")


def print_table(points: list[dict[str, float]]) -> None:
    print(f"{'clients':>8} {'floor KiB':>10} {'service KiB':>12} {'ratio':>6} {'load':>5}")
    for point in sorted(points, key=lambda point: point["clients"]):
        print(f"{point['clients']:>8} {point['floor_kib']:>10.1f} {point['service_kib']:>12.1f} "
              f"{point['service_kib'] / point['floor_kib']:>6.2f} {point.get('load', 0):>5.1f}")


def client_counts(text: str) -> list[int]:
    counts = sorted({int(part) for part in text.split(",") if part.strip()})
    if not counts or counts[0] < 1:
        raise argparse.ArgumentTypeError("a comma-separated list of positive client counts")
    return counts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=client_counts, default=[1000, 2000, 5000],
                        help="client counts, comma-separated (default 1000,2000,5000)")
    parser.add_argument("--registers", type=int, default=2, help="registers per client (default 2)")
    parser.add_argument("--chart", metavar="DIR", type=Path, default=ROOT / "docs" / "images",
                        help="where to write memory_per_client.png and .json (default docs/images)")
    parser.add_argument("--from", dest="source", metavar="FILE", type=Path,
                        help="draw from a saved memory_per_client.json instead of measuring")
    args = parser.parse_args()
    if args.source:
        saved = json.loads(args.source.read_text())
        points, registers = saved["points"], saved["registers"]
    else:
        points, registers = [], args.registers
        for count in args.clients:
            print(f"memory_chart: connections.py --clients {count}", file=sys.stderr, flush=True)
            try:
                points.append(measure(count, registers))
            except (ChartError, subprocess.TimeoutExpired) as error:
                print(f"memory_chart: {error}", file=sys.stderr)
                return 1
        args.chart.mkdir(parents=True, exist_ok=True)
        (args.chart / "memory_per_client.json").write_text(
            json.dumps({"registers": registers, "points": points}, indent=1) + "\n")
    print_table(points)
    print(f"chart: {draw(points, registers, args.chart)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
