"""runc's host-wide CRIU configuration during a split (lazy-local) restore: the administrator's
file is kept in ours and put back, and a leftover of a killed agent is put right."""

from __future__ import annotations

from pathlib import Path

import pytest

from migrate.engines.docker import runc_conf as d
from migrate.engines.docker.engine import DockerEngine


@pytest.fixture
def conf(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "criu" / "runc.conf"
    monkeypatch.setattr(d, "RUNC_CRIU_CONF", path)
    monkeypatch.setattr(d, "_CONF_LOCK", tmp_path / "lock")
    return path


def _options(path: Path) -> list[str]:
    return [x for x in path.read_text().splitlines() if x and not x.startswith("#")]


def test_admin_options_are_kept_during_the_restore_and_put_back(conf: Path) -> None:
    conf.parent.mkdir()
    conf.write_text("file-locks\ntcp-established\n")
    original = d._write_lazy_conf(Path("/run/migrate/lazy-x"))
    assert original == "file-locks\ntcp-established\n"
    assert conf.read_text().startswith(d._CONF_MARKER)
    assert _options(conf) == [
        "file-locks",
        "tcp-established",
        "lazy-pages",
        "work-dir /run/migrate/lazy-x",
    ]
    d._restore_conf(original)
    assert conf.read_text() == "file-locks\ntcp-established\n"
    assert not d._conf_saved().exists()


def test_no_admin_file_means_none_left(conf: Path) -> None:
    original = d._write_lazy_conf(Path("/w"))
    assert original is None
    assert _options(conf) == ["lazy-pages", "work-dir /w"]
    d._restore_conf(original)
    assert not conf.exists()


@pytest.mark.parametrize("admin", ["file-locks\n", None])
def test_leftover_of_a_killed_agent_is_put_right_by_the_next_lock(
    conf: Path, admin: str | None
) -> None:
    if admin is not None:
        conf.parent.mkdir()
        conf.write_text(admin)
    d._write_lazy_conf(Path("/w"))  # ... and the agent dies before _restore_conf
    with d.criu_config_lock(exclusive=False):
        assert (conf.read_text() if conf.exists() else None) == admin
    assert not d._conf_saved().exists()


def test_spare_copy_without_our_file_is_dropped(conf: Path) -> None:
    conf.parent.mkdir()
    conf.write_text("file-locks\n")
    d._conf_saved().write_text("file-locks\n")  # killed between the copy and our write
    with d.criu_config_lock(exclusive=True):
        pass
    assert conf.read_text() == "file-locks\n"
    assert not d._conf_saved().exists()


def test_admin_lazy_settings_block_the_split_restore(conf: Path) -> None:
    eng = object.__new__(DockerEngine)
    assert eng.lazy_restore_blocker() == ""  # no file
    conf.parent.mkdir()
    conf.write_text("# ours? no\nfile-locks\n")
    assert eng.lazy_restore_blocker() == ""
    conf.write_text("file-locks\nwork-dir /x\n")
    assert "work-dir" in eng.lazy_restore_blocker()


def test_lock_wait_is_bounded_and_names_the_holder(
    conf: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import fcntl
    import os

    from migrate.core.errors import EngineError

    monkeypatch.setattr(d, "CONF_LOCK_WAIT_S", 0.3)
    held = os.open(d._CONF_LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(EngineError, match=f"pid {os.getpid()}"):
            with d.criu_config_lock(exclusive=False):
                pass
    finally:
        os.close(held)
    with d.criu_config_lock(exclusive=True):  # free again: taken at once
        pass
