"""The README stays true: its YAML validates, its commands exist, its metrics are exported."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from portwatch.config import parse_config

REPO = Path(__file__).resolve().parent.parent
README = (REPO / "README.md").read_text()


def test_readme_yaml_examples_are_valid_config() -> None:
    blocks = re.findall(r"```yaml\n(.*?)```", README, re.S)
    assert blocks
    for block in blocks:
        parse_config(yaml.safe_load(block), "README.md")


def test_setup_commands_exist_and_ci_runs_the_test_command() -> None:
    commands = re.findall(r"```sh\n(.*?)```", README, re.S)
    assert "bash scripts/install && portwatch scan\n" in commands
    assert "bash scripts/test\n" in commands
    assert (REPO / "scripts" / "install").is_file() and (REPO / "scripts" / "test").is_file()
    assert "bash scripts/test" in (REPO / ".ci" / "run").read_text()


def test_readme_documents_every_finding_kind() -> None:
    from portwatch.model import Kind

    for kind in Kind:
        assert f"`{kind.value}`" in README, kind
