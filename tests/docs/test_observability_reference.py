"""The metric and log references of docs/operations.md match what the code emits."""

from __future__ import annotations

import re
from pathlib import Path

from tests.docs.code_reference import log_events_in_code, metrics_in_code

OPERATIONS = (Path(__file__).resolve().parents[2] / "docs" / "operations.md").read_text()


def section(title: str) -> list[str]:
    """The table rows under a heading of docs/operations.md."""
    text = OPERATIONS.split(f"### {title}", 1)[1].split("\n#", 1)[0]
    return [line for line in text.splitlines() if line.startswith("| `") or line.startswith("| ")]


def rows_naming(rows: list[str], name: str) -> list[str]:
    return [row for row in rows if f"`{name}`" in row.split("|")[1]]


def test_every_metric_and_tag_is_documented() -> None:
    rows = section("Metrics")
    missing = []
    for name, tags in sorted(metrics_in_code().items()):
        documented = rows_naming(rows, name)
        if not documented:
            missing.append(name)
            continue
        missing += [f"{name} tag {tag}" for tag in sorted(tags) if not any(f"`{tag}`" in r for r in documented)]
    assert missing == []


def test_every_documented_metric_exists() -> None:
    in_code = set(metrics_in_code())
    documented = {name for row in section("Metrics") for name in re.findall(r"`([a-z_.{}…]+)`", row.split("|")[1])}
    assert documented - in_code == set()


def test_every_log_event_and_field_is_documented() -> None:
    rows = section("Logs")
    missing = []
    for message, fields in sorted(log_events_in_code().items()):
        documented = [row for row in rows if message.split(":")[0] in row.split("|")[1]]
        if not documented:
            missing.append(message)
            continue
        missing += [f"{message}: {field}" for field in sorted(fields) if not any(f"`{field}`" in r for r in documented)]
    assert missing == []


def test_session_stats_fields_are_documented() -> None:
    import dataclasses

    from autopush_flask.connection.session import SessionStats

    [row] = [r for r in section("Logs") if "`Session`" in r]
    assert [f.name for f in dataclasses.fields(SessionStats) if f"`{f.name}`" not in row] == []
