"""CRIU discovery, version parsing, self-check (real and fake binaries), cpuinfo, log tails."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from migrate.checkpoint import criu
from migrate.core.errors import CriuUnavailable

pytestmark = pytest.mark.unit

REAL_CRIU = shutil.which("criu") or next(
    (p for p in ("/usr/local/sbin/criu", "/usr/sbin/criu") if os.access(p, os.X_OK)), None
)


def _real_criu_works() -> bool:
    if REAL_CRIU is None or os.geteuid() != 0:
        return False
    v = criu.criu_version(REAL_CRIU)
    return v is not None and v >= criu.MIN_CRIU


needs_real_criu = pytest.mark.skipif(
    not _real_criu_works(), reason="needs root and CRIU >= 4.2 installed"
)


def fake_criu(directory: Path, body: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    p = directory / "criu"
    p.write_text("#!/bin/sh\n" + body + "\n")
    p.chmod(0o755)
    return p


# --- versions ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Version: 4.2.1\n", (4, 2, 1)),
        ("Version: 3.17.1\n", (3, 17, 1)),
        # CRIU drops a zero sublevel; a GitID line may follow.
        ("Version: 4.2\nGitID: v4.2-12-gdeadbee\n", (4, 2, 0)),
        ("Version: 4.1.1-rc1\n", (4, 1, 1)),
        ("  Version:   10.0.3\n", (10, 0, 3)),
        ("GitID: v4.2\nVersion: 4.2.1\n", (4, 2, 1)),
        ("criu: unknown option\n", None),
        ("", None),
        ("Version: four\n", None),
    ],
)
def test_parse_version(text: str, expected: tuple[int, int, int] | None) -> None:
    assert criu.parse_version(text) == expected


def test_min_criu_is_4_2() -> None:
    assert criu.MIN_CRIU == (4, 2, 0)
    assert (4, 2, 1) >= criu.MIN_CRIU
    assert (4, 1, 9) < criu.MIN_CRIU
    assert (3, 17, 1) < criu.MIN_CRIU


def test_format_version() -> None:
    assert criu.format_version((4, 2, 1)) == "4.2.1"
    assert criu.format_version(None) == "unknown"


def test_criu_version_of_fake(tmp_path: Path) -> None:
    b = fake_criu(tmp_path, 'echo "Version: 3.17.1"')
    assert criu.criu_version(str(b)) == (3, 17, 1)


def test_criu_version_of_garbage_and_missing(tmp_path: Path) -> None:
    b = fake_criu(tmp_path, "echo hello")
    assert criu.criu_version(str(b)) is None
    assert criu.criu_version(str(tmp_path / "nope")) is None


def test_criu_version_times_out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    b = fake_criu(tmp_path, "exec sleep 30")
    monkeypatch.setattr(criu, "VERSION_TIMEOUT_S", 0.5)
    t = time.monotonic()
    assert criu.criu_version(str(b)) is None
    assert time.monotonic() - t < 10


# --- finding -----------------------------------------------------------------------------


def test_find_criu_respects_path_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = fake_criu(tmp_path / "a", 'echo "Version: 3.17.1"')
    fake_criu(tmp_path / "b", 'echo "Version: 4.2.1"')
    monkeypatch.delenv(criu.ENV_CRIU, raising=False)
    monkeypatch.setenv("PATH", f"{tmp_path / 'a'}:{tmp_path / 'b'}:{os.environ['PATH']}")
    assert criu.find_criu() == str(first)


def test_find_criu_env_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_criu(tmp_path / "onpath", 'echo "Version: 4.2.1"')
    chosen = fake_criu(tmp_path / "chosen", 'echo "Version: 4.2.1"')
    monkeypatch.setenv("PATH", f"{tmp_path / 'onpath'}:{os.environ['PATH']}")
    monkeypatch.setenv(criu.ENV_CRIU, str(chosen))
    assert criu.find_criu() == str(chosen)


def test_find_criu_bad_override_means_absent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A wrong override must not silently pick some other criu.
    fake_criu(tmp_path / "onpath", 'echo "Version: 4.2.1"')
    monkeypatch.setenv("PATH", f"{tmp_path / 'onpath'}:{os.environ['PATH']}")
    monkeypatch.setenv(criu.ENV_CRIU, str(tmp_path / "missing" / "criu"))
    assert criu.find_criu() is None


def test_find_criu_falls_back_to_sbin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sbin = tmp_path / "sbin"
    b = fake_criu(sbin, 'echo "Version: 4.2.1"')
    monkeypatch.delenv(criu.ENV_CRIU, raising=False)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.setattr(criu, "SEARCH_DIRS", (str(tmp_path / "none"), str(sbin)))
    assert criu.find_criu() == str(b)
    monkeypatch.setattr(criu, "SEARCH_DIRS", (str(tmp_path / "none"),))
    assert criu.find_criu() is None


# --- capabilities ------------------------------------------------------------------------


def test_capabilities_without_criu() -> None:
    caps = criu.capabilities(None)
    assert not caps.found
    assert caps.version is None
    assert not caps.check_ok
    assert not caps.usable
    assert "not found" in caps.check_output
    assert not caps.lazy_pages and not caps.mem_dirty_track


def test_capabilities_of_old_fake(tmp_path: Path) -> None:
    b = fake_criu(tmp_path, 'echo "Version: 3.17.1"')
    caps = criu.capabilities(str(b))
    assert caps.path == str(b)
    assert caps.version == (3, 17, 1)
    assert not caps.version_ok
    # The fake does not speak swrk's RPC: the self-check must fail, not hang.
    assert not caps.check_ok
    assert not caps.usable


def test_capabilities_of_missing_binary(tmp_path: Path) -> None:
    caps = criu.capabilities(str(tmp_path / "criu"), probe_features=False)
    assert caps.version is None
    assert not caps.check_ok
    assert caps.features == {}


def test_self_check_times_out(tmp_path: Path) -> None:
    b = fake_criu(tmp_path, "exec sleep 30")
    t = time.monotonic()
    ok, output, _method = criu.self_check(str(b), timeout=0.5)
    assert not ok
    assert output
    assert time.monotonic() - t < 10


def test_self_check_failing_plain_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Without pycriu the plain `criu check` decides, and its words become the output.
    b = fake_criu(
        tmp_path, 'echo "Error (criu/cr-check.c:1): vdso: Unexpected rt vDSO" >&2; exit 1'
    )
    monkeypatch.setattr(criu, "_pycriu_check", _no_pycriu)
    ok, output, method = criu.self_check(str(b))
    assert (ok, method) == (False, "criu check")
    assert "vDSO" in output


def test_self_check_passing_plain_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    b = fake_criu(tmp_path, 'echo "Looks good."')
    monkeypatch.setattr(criu, "_pycriu_check", _no_pycriu)
    assert criu.self_check(str(b)) == (True, "Looks good.", "criu check")


def _no_pycriu(binary: str, timeout: float) -> tuple[bool, str]:
    raise ImportError("pycriu")


def test_capabilities_is_frozen_and_hashable() -> None:
    caps = criu.capabilities(None)
    with pytest.raises(AttributeError):
        caps.check_ok = True  # type: ignore[misc]
    hash(caps)
    assert caps.to_wire()["version"] is None


@needs_real_criu
def test_real_criu_capabilities() -> None:
    caps = criu.capabilities(REAL_CRIU)
    assert caps.version is not None and caps.version >= criu.MIN_CRIU
    assert caps.check_ok, caps.check_output
    assert caps.usable
    assert set(caps.features) == set(criu.FEATURES)
    if criu.pycriu_available():
        assert caps.check_method == "pycriu"
    wire = caps.to_wire()
    assert wire["version"] == list(caps.version)


@needs_real_criu
def test_real_criu_feature_unknown_is_unsupported() -> None:
    assert REAL_CRIU is not None
    assert not criu.feature_supported(REAL_CRIU, "no-such-feature")


# --- cpuinfo -----------------------------------------------------------------------------


@needs_real_criu
def test_cpuinfo_round_trip(tmp_path: Path) -> None:
    img = criu.cpuinfo_dump(tmp_path / "img", REAL_CRIU)
    assert img.name == criu.CPUINFO_IMAGE and img.stat().st_size > 0
    assert criu.cpuinfo_check(tmp_path / "img", REAL_CRIU).ok
    data = criu.cpuinfo_image(REAL_CRIU)
    assert criu.cpuinfo_compatible(data, REAL_CRIU).ok


@needs_real_criu
def test_cpuinfo_check_rejects_garbage(tmp_path: Path) -> None:
    res = criu.cpuinfo_compatible(b"not a cpuinfo image", REAL_CRIU)
    assert not res.ok
    assert res.output


def test_cpuinfo_check_without_image(tmp_path: Path) -> None:
    b = fake_criu(tmp_path / "bin", "exit 0")
    res = criu.cpuinfo_check(tmp_path, str(b))
    assert not res.ok and criu.CPUINFO_IMAGE in res.output


def test_cpuinfo_without_criu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(criu.ENV_CRIU, str(tmp_path / "missing"))
    with pytest.raises(CriuUnavailable, match="criu not found"):
        criu.cpuinfo_dump(tmp_path)


def test_cpuinfo_dump_failure_carries_output(tmp_path: Path) -> None:
    b = fake_criu(tmp_path / "bin", 'echo "Error (criu/cpu.c:1): boom" >&2; exit 1')
    with pytest.raises(CriuUnavailable, match="boom") as ei:
        criu.cpuinfo_dump(tmp_path / "img", str(b))
    assert "boom" in ei.value.details["criu_log"]


# --- log tails ---------------------------------------------------------------------------


def test_log_tail_short_log_is_whole(tmp_path: Path) -> None:
    p = tmp_path / "dump.log"
    p.write_text("a\nb\nc\n")
    assert criu.log_tail(p) == "a\nb\nc"


def test_log_tail_keeps_early_errors_and_last_lines(tmp_path: Path) -> None:
    rows = [f"({i:08d}) line {i}" for i in range(1000)]
    rows[10] = "(00000010) Error (criu/rlimit.c:1): rlimit: Can't setup RLIMIT_NOFILE"
    rows[500] = "(00000500) Error (criu/cr-dump.c:1): Can't get rlimit 0: Operation not permitted"
    p = tmp_path / "dump.log"
    p.write_text("\n".join(rows) + "\n")
    tail = criu.log_tail(p, lines=10)
    out = tail.splitlines()
    assert "Can't get rlimit 0" in tail
    # The harmless RLIMIT_NOFILE line does not take a slot.
    assert "RLIMIT_NOFILE" not in tail
    assert out[-1] == rows[-1]
    assert rows[994] in out  # at least half the budget for the final lines
    assert "[...]" in out
    assert len([r for r in out if r != "[...]"]) <= 10


def test_log_tail_without_errors_uses_whole_budget(tmp_path: Path) -> None:
    p = tmp_path / "x.log"
    p.write_text("\n".join(str(i) for i in range(100)))
    assert criu.log_tail(p, lines=8).splitlines() == ["[...]"] + [str(i) for i in range(92, 100)]


def test_log_tail_missing_file(tmp_path: Path) -> None:
    assert criu.log_tail(tmp_path / "nope.log") == ""


def test_log_tail_huge_log_reads_only_the_end(tmp_path: Path) -> None:
    p = tmp_path / "big.log"
    with p.open("w") as f:
        f.write("Error early, far before the window\n")
        for i in range(200_000):
            f.write(f"({i:08d}) filler line number {i}\n")
        f.write("(99999999) Error (criu/x.c:1): the real cause\n")
        f.write("(99999999) last\n")
    tail = criu.log_tail(p, lines=6)
    assert "the real cause" in tail
    assert tail.splitlines()[-1] == "(99999999) last"
    assert "far before" not in tail


def test_processes_using_finds_command_lines_and_working_directories(tmp_path: Path) -> None:
    import subprocess
    import time

    staging = tmp_path / "staging" / "m1"
    staging.mkdir(parents=True)
    other = tmp_path / "staging" / "m10"  # a name that merely starts the same
    other.mkdir()
    named = subprocess.Popen(["sh", "-c", "sleep 30", str(staging / "checkpoint")])
    inside = subprocess.Popen(["sleep", "30"], cwd=staging)
    elsewhere = subprocess.Popen(["sh", "-c", "sleep 30", str(other)], cwd=other)
    try:
        time.sleep(0.2)
        found = criu.processes_using(staging)
        assert named.pid in found and inside.pid in found
        assert elsewhere.pid not in found
        assert set(criu.wait_until_unused(staging, 0.3)) >= {named.pid, inside.pid}
    finally:
        for p in (named, inside, elsewhere):
            p.kill()
            p.wait()
    assert criu.wait_until_unused(staging, 5) == []
