"""The test containers boot only what the tests need, whatever this machine has installed.

A container's ``/etc`` starts empty, so systemd applies the distribution's presets to
every unit under ``/usr`` (this machine's packages included). A unit enabled into
multi-user.target that waits for network-online.target and never finishes (what
podman-restart.service did) must not delay the boot the tests wait for.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Iterator

import pytest

from tests.conftest import require
from tests.nspawn import BOOT_TARGET, Container, nspawn_available

pytestmark = pytest.mark.slow

STALL_UNIT = "pwtest-stall.service"
STALL_TEXT = """\
[Unit]
Description=A unit that would stall boot (waits for the network, never finishes)
Wants=network-online.target
After=network-online.target

[Service]
Type=oneshot
ExecStart=/bin/sleep infinity
TimeoutStartSec=infinity

[Install]
WantedBy=multi-user.target
"""


@pytest.fixture
def stall_files() -> Iterator[tuple[Path, Path]]:
    """A stalling unit file and a multi-user.target.wants folder enabling it (temporary, this test's)."""
    with tempfile.TemporaryDirectory(prefix="pwtest-stall-") as d:
        unit = Path(d) / STALL_UNIT
        unit.write_text(STALL_TEXT)
        wants = Path(d) / "wants"
        wants.mkdir()
        os.symlink(f"/etc/systemd/system/{STALL_UNIT}", wants / STALL_UNIT)
        yield unit, wants


def test_an_enabled_unit_that_would_stall_boot_does_not_stall_the_test_container(
        stall_files: tuple[Path, Path]) -> None:
    ok, reason = nspawn_available()
    require(ok, reason)
    unit, wants = stall_files
    binds = [(str(unit), f"/etc/systemd/system/{STALL_UNIT}"),
             (str(wants), "/etc/systemd/system/multi-user.target.wants")]
    # Container() raises ContainerError when boot does not finish within the timeout.
    with Container(binds=binds, boot_timeout=120) as c:
        assert c.unit_property(STALL_UNIT, "UnitFileState") == "enabled"
        assert c.unit_property(STALL_UNIT, "ActiveState") == "inactive"
        assert c.unit_property("multi-user.target", "ActiveState") == "inactive"
        assert c.unit_property(BOOT_TARGET, "ActiveState") == "active"
        state = c.run(["systemctl", "is-system-running"]).stdout.strip()
        assert state in ("running", "degraded"), state
