"""Shared fixtures: network namespaces and the rule that CI never skips."""

from __future__ import annotations

import os
import shutil
from typing import Iterator

import pytest

from tests.netns import NetNS, netns_available


def require(condition: bool, reason: str) -> None:
    """Skip the calling test unless ``condition`` holds; under ``CI=true`` fail instead.

    CI's machine has root, namespaces and every Debian package the tests use,
    so a missing one there is a broken set-up, not a reason to skip.
    """
    if condition:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"required in CI: {reason}")
    pytest.skip(reason)


def require_binary(name: str) -> str:
    """Path of executable ``name``; skips (fails in CI) when it is not installed."""
    path = shutil.which(name) or (f"/usr/bin/{name}" if os.path.exists(f"/usr/bin/{name}") else None)
    require(path is not None, f"{name} is not installed")
    assert path is not None
    return path


@pytest.fixture
def netns() -> Iterator[NetNS]:
    """A fresh network namespace with loopback up, removed (with its processes) after the test."""
    ok, reason = netns_available()
    require(ok, reason)
    ns = NetNS()
    try:
        yield ns
    finally:
        ns.close()
