"""Every storage operation a session yields is performed by the one interpreter, on the matching method."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from autopush_flask.connection.storage_ops import STORAGE_OPS, run_storage
from autopush_flask.db import Storage


class Recorder:
    """Answers any method call with its name and arguments."""

    def __getattr__(self, method: str) -> Any:
        return lambda *args: (method, args)


def sample(op_type: type) -> Any:
    """An instance whose fields are their own names, so the arguments passed on can be checked."""
    return op_type(*(field.name for field in dataclasses.fields(op_type)))


@pytest.mark.parametrize("op_type", STORAGE_OPS, ids=lambda t: t.__name__)
def test_each_operation_calls_its_storage_method_with_its_fields(op_type: type) -> None:
    op = sample(op_type)
    method, args = run_storage(Recorder(), op)  # type: ignore[arg-type]
    assert hasattr(Storage, method)
    assert args == tuple(field.name for field in dataclasses.fields(op_type))


def test_names_are_the_documented_metric_names() -> None:
    names = {op_type.__name__: op_type.name for op_type in STORAGE_OPS}
    assert names["ClaimUser"] == "update_user"
    assert names["AdvanceBookmark"] == "update_bookmark"
    assert names["SaveLateMessages"] == "store_direct"
    assert len(set(names.values())) == len(names)
