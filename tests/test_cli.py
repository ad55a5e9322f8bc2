"""The ``portwatch`` command as a user runs it: ``--version``, the default configuration file, the table's width."""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path

from tests.netns import REPO

PORTWATCH = REPO / ".venv" / "bin" / "portwatch"
WAIT = 60.0


def test_version_in_a_checkout_says_revision_unknown() -> None:
    res = subprocess.run([str(PORTWATCH), "--version"], capture_output=True, text=True, timeout=WAIT)
    assert res.returncode == 0, res.stderr
    assert res.stdout == f"portwatch 0.1.0 (revision unknown, Python {platform.python_version()})\n"


def test_version_of_a_build_carries_its_revision(tmp_path: Path) -> None:
    package = tmp_path / "portwatch"
    shutil.copytree(REPO / "portwatch", package, ignore=shutil.ignore_patterns("__pycache__"))
    (package / "_build.py").write_text('REVISION = "v0.1.0-3-gabc1234"\n')
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    res = subprocess.run([sys.executable, "-m", "portwatch", "--version"], capture_output=True, text=True,
                         timeout=WAIT, env=env, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert re.fullmatch(r"portwatch \S+ \(revision v0\.1\.0-3-gabc1234, Python \d+\.\d+\.\d+\S*\)\n", res.stdout)
