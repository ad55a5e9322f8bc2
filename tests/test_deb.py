"""The Debian package, installed as an operator would: into a fresh Debian 12 booted with systemd.

The module builds ``portwatch_<version>_<arch>.deb`` with ``scripts/build-deb`` (lintian
included) into a temporary directory, makes a minimal Debian 12 tree with mmdebstrap
(systemd, man-db, bash-completion; no compiler), and boots it with systemd-nspawn
(:class:`tests.nspawn.Container`, on that tree instead of ``/``, with a tmpfs overlay:
``--volatile=overlay``, so nothing the container writes survives it).

How apt resolves the package's dependencies without a network: the container has a
private network, so while mmdebstrap makes the tree (on this machine, with the
network) it keeps the Debian archive's package lists and runs
``apt-get install --download-only`` on the .deb, which resolves its dependencies
against the archive and leaves their .debs in apt's cache. Inside the container,
``apt-get install ./portwatch.deb`` then resolves the same way from the archive's
lists and installs from the cache (it has nothing left to download; a download
would fail: no network), exactly as on a host with a mirror.
This was chosen over a ``file:`` repository because it needs no repository
metadata of our own and runs the resolver the operator runs.

Everything is removed afterwards: the container (powered off), the tree and the
build directory. Nothing is installed on this machine. About 2-3 minutes, most of it
mmdebstrap downloading and unpacking about 70 packages.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Iterable, Iterator

import pytest

from tests.conftest import require
from tests.nspawn import Container, nspawn_available

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

REPO = Path(__file__).resolve().parent.parent
CLEAN_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "HOME": "/root"}
DEB_DIR = "/srv/portwatch-deb"
UNIT = "portwatch.service"
#: What the tree holds besides Debian's essential packages: an init, and what the checks use.
TREE_PACKAGES = "systemd,systemd-sysv,dbus,man-db,bash-completion"
BUILD_TOOLS = ("dpkg-buildpackage", "dh", "dh_python3", "lintian", "mmdebstrap")


class TreeContainer(Container):
    """A :class:`Container` booting the Debian tree ``rootfs`` (read-only, tmpfs overlay) instead of ``/``."""

    def __init__(self, rootfs: Path, binds: Iterable[tuple[str, str]] = (), *,
                 prefix: str = "pwtest") -> None:
        super().__init__(binds, prefix=prefix)
        self.rootfs = rootfs

    def command(self) -> list[str]:
        """The harness's command line with ``-D ROOTFS --volatile=overlay``."""
        args = super().command()
        args[args.index("-D") + 1] = str(self.rootfs)
        args[args.index("--volatile=yes")] = "--volatile=overlay"
        return args


def _version() -> str:
    for line in (REPO / "portwatch" / "__init__.py").read_text().splitlines():
        if line.startswith("__version__"):
            return line.split('"')[1]
    raise AssertionError("no __version__ in portwatch/__init__.py")


def _run(args: list[str], timeout: float) -> None:
    r = subprocess.run(args, capture_output=True, text=True, env=CLEAN_ENV, timeout=timeout,
                       stdin=subprocess.DEVNULL)
    assert r.returncode == 0, f"{args[0]} exited {r.returncode}\n{r.stdout[-4000:]}\n{r.stderr[-4000:]}"


@pytest.fixture(scope="module")
def installed() -> Iterator[Container]:
    """A booted fresh Debian 12 with the package installed by apt (shared by this module's tests)."""
    ok, reason = nspawn_available()
    require(ok, reason)
    for tool in BUILD_TOOLS:
        require(shutil.which(tool, path=CLEAN_ENV["PATH"]) is not None,
                f"{tool} is not installed (scripts/test installs the packaging tools)")
    work = Path(tempfile.mkdtemp(prefix="portwatch-deb-test.", dir="/var/tmp"))
    try:
        debs = work / "debs"
        _run(["bash", str(REPO / "scripts" / "build-deb"), "--out", str(debs)], timeout=300)
        arch = subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True, check=True,
                              env=CLEAN_ENV).stdout.strip()
        deb = debs / f"portwatch_{_version()}_{arch}.deb"
        assert deb.is_file()
        rootfs = work / "rootfs"
        _run(["mmdebstrap", "--quiet", "--variant=minbase", f"--include={TREE_PACKAGES}",
              "--skip=cleanup/apt",
              f'--customize-hook=cp "{deb}" "$1/tmp/portwatch.deb"',
              '--customize-hook=chroot "$1" apt-get install -y -q --download-only '
              "--no-install-recommends /tmp/portwatch.deb",
              '--customize-hook=rm "$1/tmp/portwatch.deb"',
              "bookworm", str(rootfs)], timeout=600)
        with TreeContainer(rootfs, binds=[(str(debs), DEB_DIR)], prefix="pwdeb") as c:
            # (from /: nsenter keeps this process's working directory, absent in there)
            r = c.run(["env", "--chdir=/", "apt-get", "install", "-y", "-q", "--no-install-recommends",
                       f"{DEB_DIR}/{deb.name}"], timeout=300,
                      env={"DEBIAN_FRONTEND": "noninteractive"})
            assert r.returncode == 0, f"apt-get install failed:\n{r.stdout}\n{r.stderr}"
            yield c
    finally:
        shutil.rmtree(work, ignore_errors=True)


def test_no_compiler_or_dev_package_is_installed(installed: Container) -> None:
    packages = installed.run(["dpkg-query", "-W", "-f", "${Package} ${Status}\n"],
                             check=True).stdout.splitlines()
    names = [p.split()[0] for p in packages if p.endswith("install ok installed")]
    assert "portwatch" in names and "python3-psutil" in names
    # (gcc-12-base is not a compiler: it holds the copyright of libgcc-s1, which is essential)
    bad = [n for n in names if n.endswith("-dev") or n in ("build-essential", "make")
           or re.fullmatch(r"(gcc|g\+\+|cpp|clang|tcc)(-[0-9]+)?", n.split(":")[0])]
    assert bad == []
    assert installed.run(["sh", "-c", "command -v cc gcc c99"]).returncode != 0


def test_service_is_enabled_and_active(installed: Container) -> None:
    installed.wait_for(lambda: installed.unit_property(UNIT, "ActiveState") == "active" or None,
                       timeout=60, what=f"{UNIT} active", units=[UNIT])
    assert installed.systemctl("is-active", UNIT).stdout.strip() == "active"
    assert installed.systemctl("is-enabled", UNIT).stdout.strip() == "enabled"
    assert installed.unit_property(UNIT, "ExecStart").split(" ; ")[0].endswith("path=/usr/bin/portwatch")


def test_metrics_answers(installed: Container) -> None:
    installed.wait_for(lambda: installed.unit_property(UNIT, "ActiveState") == "active" or None,
                       timeout=60, what=f"{UNIT} active", units=[UNIT])
    r = installed.run(["python3", "-c", "import urllib.request, sys; sys.stdout.write(urllib.request"
                       ".urlopen('http://127.0.0.1:9731/metrics', timeout=10).read().decode())"],
                      check=True)
    assert "portwatch_build_info{" in r.stdout
    assert "portwatch_last_scan_success 1.0" in r.stdout


def test_reload_keeps_the_daemon_running(installed: Container) -> None:
    installed.wait_for(lambda: installed.unit_property(UNIT, "ActiveState") == "active" or None,
                       timeout=60, what=f"{UNIT} active", units=[UNIT])
    pid = installed.unit_property(UNIT, "MainPID")
    installed.systemctl("reload", UNIT, check=True)
    installed.wait_for(
        lambda: any("reloaded configuration from /etc/portwatch/portwatch.yaml" in str(e.get("MESSAGE"))
                    for e in installed.journal(UNIT)) or None,
        timeout=30, what="reload logged", units=[UNIT])
    assert installed.unit_property(UNIT, "MainPID") == pid
    assert installed.systemctl("is-active", UNIT).stdout.strip() == "active"


def test_man_pages_render(installed: Container) -> None:
    page = installed.run(["man", "portwatch"], check=True, env={"MANPAGER": "cat"}).stdout
    assert "check-config" in page and "EXIT STATUS" in page
    config_page = installed.run(["man", "5", "portwatch.yaml"], check=True,
                                env={"MANPAGER": "cat"}).stdout
    assert "state_directory" in config_page
    assert "services[].port" in config_page.replace("\u2010", "-")  # from the schema


def test_files_the_docs_point_to_are_installed(installed: Container) -> None:
    """Every absolute path the man pages, the shipped configuration and the alert rules name exists."""
    # The pages' FILES and SEE ALSO sections (the last two); wide, neither hyphenated nor
    # justified: a path stays on one line.
    texts = [installed.run(["man", "--nh", "--nj", section, name], check=True,
                           env={"MANPAGER": "cat", "MANWIDTH": "1000"}).stdout.replace("\u2010", "-")
             .split("\nFILES\n", 1)[1] for section, name in (("8", "portwatch"), ("5", "portwatch.yaml"))]
    texts.append(installed.run(["cat", "/etc/portwatch/portwatch.yaml"], check=True).stdout)
    paths = {m.rstrip(".,;:)") for text in texts
             for m in re.findall(r"(?<![\w:/])(/(?:etc|usr|var)/[\w./-]+)", text)}
    # The rules' runbook links (the rest of that file speaks of the Prometheus server's paths).
    rules = installed.run(["cat", "/usr/share/portwatch/prometheus/portwatch.rules.yml"], check=True).stdout
    paths |= set(re.findall(r"file://(/[\w./-]+)", rules))
    assert {"/usr/share/doc/portwatch/configuration.md.gz", "/usr/share/doc/portwatch/examples/portwatch.yaml",
            "/usr/share/portwatch/prometheus/runbooks.md"} <= paths
    missing = [p for p in sorted(paths) if installed.run(["test", "-e", p]).returncode != 0]
    assert missing == []


def test_bash_completion_loads_and_completes(installed: Container) -> None:
    script = (". /usr/share/bash-completion/bash_completion; __load_completion portwatch; "
              "complete -p portwatch; COMP_WORDS=(portwatch sc); COMP_CWORD=1; _portwatch; "
              'echo "${COMPREPLY[@]}"')
    out = installed.run(["bash", "-c", script], check=True).stdout.splitlines()
    assert out == ["complete -F _portwatch portwatch", "scan"]


def test_the_package_runs_the_c_loop_of_the_classifier(installed: Container) -> None:
    # built for the package's architecture by the build (python3-all-dev, gcc), no compiler on the host
    r = installed.run(["/usr/bin/portwatch", "--version"], check=True)
    assert re.fullmatch(r"portwatch \S+ \(revision \S+, Python 3\.11\.\d+, C classifier\)", r.stdout.strip()), r.stdout


def test_zz_purge_leaves_nothing(installed: Container) -> None:
    """Runs last (the name): purge removes the package's files, conffile, state and unit links."""
    installed.wait_for(lambda: installed.unit_property(UNIT, "ActiveState") == "active" or None,
                       timeout=60, what=f"{UNIT} active", units=[UNIT])
    listed = installed.run(["dpkg-query", "-L", "portwatch"], check=True).stdout.split()
    files = [p for p in listed
             if installed.run(["test", "-d", p]).returncode != 0]
    assert "/usr/bin/portwatch" in files and "/etc/portwatch/portwatch.yaml" in files
    r = installed.run(["apt-get", "purge", "-y", "-q", "portwatch"], timeout=120,
                      env={"DEBIAN_FRONTEND": "noninteractive"})
    assert r.returncode == 0, r.stdout + r.stderr
    left = [p for p in [*files, "/etc/portwatch", "/usr/share/portwatch", "/usr/share/doc/portwatch",
                        "/usr/lib/python3/dist-packages/portwatch", "/var/lib/portwatch",
                        "/var/lib/private/portwatch"]
            if installed.run(["test", "-e", p]).returncode == 0
            or installed.run(["test", "-L", p]).returncode == 0]
    assert left == []
    links = installed.run(["find", "/etc/systemd", "/run/systemd/system", "-name", "portwatch*"],
                          check=True).stdout.split()
    assert links == []
    status = installed.run(["dpkg-query", "-W", "-f", "${Status}", "portwatch"]).stdout
    assert status in ("", "unknown ok not-installed", "purge ok not-installed")
    assert installed.systemctl("is-active", UNIT).stdout.strip() in ("inactive", "unknown")

