"""The CRIU options migrate gives its own dumps (engines/docker/runc_conf.py, dump_env): the network lock
is skipped only where nothing the lock protects can be dumped."""

from __future__ import annotations

from pathlib import Path

import pytest

from migrate.engines.docker import runc_conf as d


@pytest.fixture
def conf(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "criu" / "runc.conf"
    path.parent.mkdir()
    monkeypatch.setattr(d, "RUNC_CRIU_CONF", path)
    monkeypatch.delenv("CRIU_CONFIG_FILE", raising=False)
    return path


def test_skips_the_network_lock_through_a_file_of_the_dump(conf: Path, tmp_path: Path) -> None:
    conf.write_text("file-locks\n")
    work = tmp_path / "work"
    work.mkdir()
    env = d.dump_env(work)
    assert env is not None
    assert env["CRIU_CONFIG_FILE"] == str(work / d.DUMP_CONF)
    assert (work / d.DUMP_CONF).read_text().split() == ["network-lock", "skip"]
    assert env["PATH"]  # runc still finds CRIU: the rest of the environment is kept
    assert conf.read_text() == "file-locks\n"  # nothing global changed


def test_no_runc_conf_is_no_reason_to_lock(conf: Path, tmp_path: Path) -> None:
    assert d.dump_env(tmp_path) is not None


@pytest.mark.parametrize(
    "text",
    [
        "tcp-established\n",
        "file-locks\n--tcp-established\n",
        "network-lock iptables\n",
        "network-lock nftables\n",
    ],
)
def test_kept_when_runc_conf_carries_tcp_connections_or_chose_a_lock(
    conf: Path, tmp_path: Path, text: str
) -> None:
    conf.write_text(text)
    assert d.dump_env(tmp_path) is None
    assert not (tmp_path / d.DUMP_CONF).exists()


def test_kept_when_the_administrator_set_criu_config_file(
    conf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CRIU_CONFIG_FILE", "/etc/criu/mine.conf")
    assert d.dump_env(tmp_path) is None


def test_lock_retries_start_short_and_stay_bounded() -> None:
    waits = [d.lock_backoff(n) for n in range(12)]
    assert waits[0] <= 0.002 and waits == sorted(waits)  # a restore in the downtime waits ms
    assert max(waits) == 0.05  # a long holder is polled, not spun on
    assert sum(waits[:4]) < 0.05  # four tries before the old fixed interval's first one
