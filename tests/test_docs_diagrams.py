"""The state diagrams of docs/architecture.md are the code's tables: every move drawn is allowed, and every allowed
move is drawn (the one the page says no code path takes aside); the ladder's diagrams name its rungs."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from llmsup.supervisor.core.engine_state import ALLOWED as ENGINE_MOVES
from llmsup.supervisor.core.ladder import Rung
from llmsup.supervisor.core.transitions import ALLOWED as JOB_MOVES

pytestmark = pytest.mark.timeout(30)
PAGE = Path(__file__).resolve().parents[1] / "docs" / "architecture.md"
EDGE = re.compile(r"^\s+(\S+) --> (\S+?):?(?: |$)", re.M)


def diagrams() -> list[set[tuple[str, str]]]:
    blocks = re.findall(r"^```mermaid\n(.*?)^```", PAGE.read_text(), re.M | re.S)
    return [{(a, b) for a, b in EDGE.findall(block) if "[*]" not in (a, b)} for block in blocks]


def table(allowed: Mapping[Any, frozenset[Any]]) -> set[tuple[str, str]]:
    return {(a.value, b.value) for a, targets in allowed.items() for b in targets}


def test_the_job_diagram_is_the_job_table() -> None:
    assert diagrams()[0] == table(JOB_MOVES)


def test_the_engine_diagram_is_the_engine_table() -> None:
    drawn = diagrams()[1]
    assert drawn <= table(ENGINE_MOVES), drawn - table(ENGINE_MOVES)
    assert table(ENGINE_MOVES) - drawn == {("interrupting", "draining")}
    assert "`interrupting -> draining`, which no code\npath takes today" in PAGE.read_text()


def test_the_ladder_diagrams_name_its_rungs() -> None:
    rungs = {rung.value for rung in Rung}
    for drawn in diagrams()[2:]:
        assert drawn and {state for edge in drawn for state in edge} <= rungs
