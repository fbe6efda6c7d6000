"""Ctrl-C and SIGTERM during `migrate run` (migrate/source/interrupt.py): the latch records
every interrupt, raises only while the migration moves forward before the point of no return,
and the state machine honours a recorded interrupt even when its KeyboardInterrupt was lost."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from migrate.core.errors import MigrateError
from migrate.engines.base import ContainerSpec
from migrate.source import interrupt, migration
from migrate.source.interrupt import Interrupted, InterruptLatch, exit_status
from migrate.source.migration import Migration, RunOptions

# --- the latch ------------------------------------------------------------------------------


def test_a_new_latch_has_nothing_to_report() -> None:
    latch = InterruptLatch()
    assert not latch.requested
    latch.check()  # nothing recorded: no exception
    assert exit_status(latch) is None
    assert latch.error().message == "interrupted"


def test_disarmed_records_without_raising() -> None:
    latch = InterruptLatch()
    assert latch.on_signal(signal.SIGINT) is False
    assert latch.requested and latch.signum == signal.SIGINT


def test_armed_raises_and_keeps_the_first_signal() -> None:
    latch = InterruptLatch()
    latch.arm()
    assert latch.on_signal(signal.SIGTERM) is True
    assert latch.on_signal(signal.SIGINT) is True
    assert latch.signum == signal.SIGTERM and latch.count == 2
    with pytest.raises(Interrupted) as ei:
        latch.handler(signal.SIGINT, None)
    assert isinstance(ei.value, KeyboardInterrupt)  # what subprocess and run() know
    assert ei.value.signum == signal.SIGINT


def test_check_raises_an_interrupt_whose_keyboardinterrupt_was_lost() -> None:
    latch = InterruptLatch()
    latch.arm()
    try:
        latch.handler(signal.SIGINT, None)
    except KeyboardInterrupt:
        pass  # discarded, as a __del__ or a library's bare except would
    with pytest.raises(Interrupted):
        latch.check()
    assert latch.error().message == "interrupted (SIGINT)"


def test_point_of_no_return_refused_once_an_interrupt_is_recorded() -> None:
    latch = InterruptLatch()
    latch.on_signal(signal.SIGINT)  # while disarmed: only recorded
    latch.arm()
    with pytest.raises(Interrupted):
        latch.pass_point_of_no_return()
    assert not latch.committed  # still before it: the caller rolls back


def test_after_the_point_of_no_return_interrupts_are_reported_not_raised() -> None:
    latch = InterruptLatch()
    latch.arm()
    latch.pass_point_of_no_return()
    assert latch.committed
    assert latch.on_signal(signal.SIGINT) is False
    latch.handler(signal.SIGTERM, None)  # does not raise
    latch.check()  # does not raise either
    assert exit_status(latch) == 128 + signal.SIGINT


def test_exit_status_is_the_shell_convention_for_the_first_signal() -> None:
    latch = InterruptLatch()
    latch.on_signal(signal.SIGTERM)
    latch.on_signal(signal.SIGINT)
    assert exit_status(latch) == 143


# --- the handlers ---------------------------------------------------------------------------


def _deliver(signum: int) -> None:
    """Send ``signum`` to this process and give Python the chance to run its handler."""
    os.kill(os.getpid(), signum)
    for _ in range(100):
        time.sleep(0.001)


def test_handling_routes_both_signals_and_restores_the_handlers() -> None:
    before = {s: signal.getsignal(s) for s in interrupt.HANDLED}
    latch = InterruptLatch()
    with interrupt.handling(latch):
        _deliver(signal.SIGTERM)  # disarmed: recorded only (the default would end the process)
        assert latch.signum == signal.SIGTERM
        latch.arm()
        with pytest.raises(Interrupted):
            _deliver(signal.SIGINT)
    assert {s: signal.getsignal(s) for s in interrupt.HANDLED} == before
    assert latch.count == 2


def test_an_inherited_ignore_is_overridden_then_restored() -> None:
    """A script's `migrate run ... &` starts with SIGINT ignored: the run still handles it."""
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        latch = InterruptLatch()
        with interrupt.handling(latch):
            assert signal.getsignal(signal.SIGINT) == latch.handler
            _deliver(signal.SIGINT)
            assert latch.signum == signal.SIGINT
        assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, old)


# --- the state machine's decision -----------------------------------------------------------


class _Conn:
    """Answers every call; ``during_commit`` runs while `commit` is in flight."""

    def __init__(self, during_commit: Any = None) -> None:
        self.calls: list[str] = []
        self.during_commit = during_commit

    def call(self, method: str, **_: Any) -> dict[str, Any]:
        self.calls.append(method)
        if method == "commit" and self.during_commit is not None:
            self.during_commit()
        return {}

    def close(self) -> None:
        pass


def _migration(
    tmp_path: Path, conn: _Conn, monkeypatch: pytest.MonkeyPatch, **steps: Any
) -> Migration:
    """A Migration whose phases before the hand-over do nothing (or what ``steps`` says);
    the hand-over (commit, bye) and the rollback are the real ones."""
    m = Migration(
        RunOptions(container="c", destination="d", state_dir=tmp_path),
        engine=object(),  # type: ignore[arg-type]
        connect=lambda: None,  # type: ignore[arg-type,return-value]
    )
    spec: Any = SimpleNamespace(id="cid", name="c")  # run() reads only these here

    def precheck(m: Migration) -> ContainerSpec:
        m.conn = conn  # type: ignore[assignment]
        return spec  # type: ignore[no-any-return]

    monkeypatch.setattr(migration, "precheck", precheck)
    for name in ("transfer_image", "prepare", "precopy", "freeze_and_move"):
        monkeypatch.setattr(migration, name, steps.get(name, lambda m, spec: None))
    monkeypatch.setattr(migration, "finish_source", lambda m, spec: "removed")
    return m


def test_an_interrupt_whose_exception_was_swallowed_still_rolls_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def swallowed(m: Migration, spec: ContainerSpec) -> None:
        try:
            m.interrupts.handler(signal.SIGINT, None)
        except KeyboardInterrupt:
            pass  # lost, as in a __del__

    conn = _Conn()
    m = _migration(tmp_path, conn, monkeypatch, prepare=swallowed)
    with pytest.raises(MigrateError) as ei:
        m.run()
    assert "interrupted (SIGINT)" in ei.value.message
    assert "commit" not in conn.calls
    assert not m.interrupts.armed  # the rollback and the clean-up are not interrupted


def test_an_interrupt_recorded_while_disarmed_stops_before_the_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conn = _Conn()
    m = _migration(
        tmp_path,
        conn,
        monkeypatch,
        freeze_and_move=lambda m, spec: m.interrupts.on_signal(signal.SIGTERM),
    )
    with pytest.raises(MigrateError) as ei:
        m.run()
    assert "interrupted (SIGTERM)" in ei.value.message
    assert conn.calls == [] and not m.commit_sent


def test_an_interrupt_after_the_commit_lets_the_migration_complete(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conn = _Conn()
    m = _migration(tmp_path, conn, monkeypatch)
    conn.during_commit = lambda: m.interrupts.handler(signal.SIGINT, None)  # must not raise
    rep = m.run()
    assert rep.status == "migrated" and rep.source_action == "removed"
    assert conn.calls == ["commit", "bye"]
    assert exit_status(m.interrupts) == 130  # completed, and says the interrupt came late


def test_no_interrupt_no_late_status(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    m = _migration(tmp_path, _Conn(), monkeypatch)
    assert m.run().status == "migrated"
    assert exit_status(m.interrupts) is None
