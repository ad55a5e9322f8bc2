"""portwatch.yaml(5) comes from the configuration schema, as docs/configuration.md's tables do.

- every key of the schema has its entry, with the type, default and meaning the
  markdown tables give it, and every finding kind of ``severities`` is named;
- groff renders the page without a warning;
- the page is rendered without a YAML library (the package build has none), and
  scripts/gen-manpages writes exactly :func:`portwatch.config.docs.manpage`'s page.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from portwatch import __version__
from portwatch.config.docs import SCHEMA, TABLES, manpage, roff_escape, roff_inline
from portwatch.config.loading import CONFIG, schema_keys
from tests.conftest import require_binary

REPO = Path(__file__).resolve().parent.parent
DATE = "2026-01-02"


def _page() -> str:
    return manpage("9.9.9", DATE)


def test_the_docs_schema_is_the_loaders() -> None:
    assert list(SCHEMA.keys("")) == list(CONFIG.keys("")) == schema_keys()


def test_every_schema_key_has_an_entry() -> None:
    page = _page()
    missing = [k for k in schema_keys()
               if not k.startswith("severities.") and f".TP\n\\fB{roff_escape(k)}\\fR\n" not in page]
    assert missing == []
    kinds = [k.split(".", 1)[1] for k in schema_keys() if k.startswith("severities.")]
    assert kinds and all(roff_escape(kind) in page for kind in kinds)


def test_each_entry_says_what_the_markdown_table_says() -> None:
    page = _page()
    rows = [line for name in TABLES for line in TABLES[name]().splitlines()
            if line.startswith("| `")]
    assert len(rows) >= 50
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split(" | ")]
        entry = page.split(f".TP\n{roff_inline(cells[0])}\n", 1)[1].split("\n.TP\n", 1)[0]
        for cell in cells[1:]:
            if cell not in ("all", "required"):
                assert roff_inline(cell.replace("\\|", "|")) in entry, (cells[0], cell)


def test_the_header_names_the_version_and_date() -> None:
    assert _page().startswith(f'.TH PORTWATCH.YAML 5 "{DATE}" "portwatch 9.9.9" "File Formats"\n')


def test_groff_renders_the_page_without_warnings(tmp_path: Path) -> None:
    groff = require_binary("groff")
    page = tmp_path / "portwatch.yaml.5"
    page.write_text(_page())
    done = subprocess.run([groff, "-man", "-k", "-Tutf8", "-P-cbou", "-ww", str(page)], capture_output=True, text=True,
                          timeout=60, env={**os.environ, "LC_ALL": "C.UTF-8"})
    assert done.returncode == 0 and done.stderr == "", done.stderr
    assert "services[].port" in done.stdout.replace("\u2010", "-")


def test_gen_manpages_writes_the_schemas_page_without_a_yaml_library(tmp_path: Path) -> None:
    runner = ("import runpy, sys\n"
              "sys.modules['yaml'] = None\n"
              "sys.argv = ['gen-manpages', '--out', sys.argv[1]]\n"
              "runpy.run_path('scripts/gen-manpages', run_name='__main__')\n")
    env = {**os.environ, "SOURCE_DATE_EPOCH": "1767312000", "PYTHONPATH": str(REPO)}  # 2026-01-02
    done = subprocess.run([sys.executable, "-c", runner, str(tmp_path)], capture_output=True, text=True,
                          timeout=60, cwd=REPO, env=env)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "portwatch.yaml.5").read_text() == manpage(__version__, DATE)
    assert (tmp_path / "portwatch.8").read_text().startswith(".TH PORTWATCH 8")
