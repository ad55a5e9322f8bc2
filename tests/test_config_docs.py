"""docs/configuration.md's reference tables are the ones the schema generates."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from portwatch.config.docs import DOCS, REGENERATE, TABLES, regenerate, render
from portwatch.config.loading import schema_keys

ROOT = Path(__file__).resolve().parent.parent


def test_committed_tables_are_the_generated_ones() -> None:
    text = DOCS.read_text(encoding="utf-8")
    assert regenerate(text) == text, f"docs/configuration.md is out of date: run `{REGENERATE}` and commit it"


def test_docs_path_is_the_repository_file() -> None:
    assert DOCS == ROOT / "docs" / "configuration.md"


def test_every_schema_key_has_a_row_in_a_generated_table() -> None:
    rows = "".join(render(name) for name in TABLES)
    undocumented = [k for k in schema_keys() if not k.startswith("severities.") and f"`{k}`" not in rows]
    assert undocumented == []


def test_a_stale_table_is_rewritten() -> None:
    text = DOCS.read_text(encoding="utf-8")
    stale = text.replace("| `metrics.top_destinations` | integer 0..1000 |", "| `metrics.top_destinations` | integer |")
    assert stale != text
    assert regenerate(stale) == text


def test_unknown_or_missing_markers_are_errors() -> None:
    with pytest.raises(ValueError, match="no markers for the tables top-level"):
        regenerate("no tables here\n")
    marker = f"<!-- generated table: nope ({REGENERATE}) -->\n<!-- end of generated table -->\n"
    with pytest.raises(ValueError, match="unknown generated table 'nope'"):
        regenerate(marker)


def test_check_mode_says_how_to_regenerate(tmp_path: Path) -> None:
    stale = tmp_path / "configuration.md"
    stale.write_text(DOCS.read_text(encoding="utf-8").replace("| `interval` | duration", "| `interval` | time"))
    command = [sys.executable, "-m", "portwatch.config.docs", "--check", str(stale)]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 1
    assert f"run: {REGENERATE}" in proc.stderr
    fresh = subprocess.run([sys.executable, "-m", "portwatch.config.docs", str(stale)],
                           capture_output=True, text=True, timeout=60, check=False)
    assert fresh.returncode == 0
    assert stale.read_text(encoding="utf-8") == DOCS.read_text(encoding="utf-8")
