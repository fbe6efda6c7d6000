"""Post-copy's pure parts: the page counts read from a lazy-pages daemon log, the relay's
verdict on a link that ends before the daemon is done, and how --strategy is resolved."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from migrate.checkpoint.postcopy import PageRelay, page_stats
from migrate.core.errors import Unsupported
from migrate.source.strategy import choose_strategy
from migrate.wire.results import PrecheckResult

LOG = """\
(00.000100) 1-5: Found 100 pages to be handled by UFFD
(00.001000) 1-5: #PF at 0x7f0000001000
(00.001100) 1-5: uffd_copy: 0x7f0000001000/4096
(00.002000) 1-5: #PF at 0x7f0000009000
(00.500000) 1-5: UFFD transferred pages: (100/100)
(00.500100) 2-7: #PF at 0x7f0000002000
(00.600000) 2-7: UFFD transferred pages: (20/20)
"""


def test_page_stats_counts_faults_and_pages(tmp_path: Path) -> None:
    log = tmp_path / "lazy-pages.log"
    log.write_text(LOG)
    st = page_stats(log)
    assert st is not None
    assert (st.faults, st.copied, st.total, st.background) == (3, 120, 120, 117)


def test_page_stats_without_summary_is_none(tmp_path: Path) -> None:
    log = tmp_path / "lazy-pages.log"
    log.write_text("(00.1) lazy-pages daemon started\n")
    assert page_stats(log) is None
    assert page_stats(tmp_path / "missing.log") is None


def _upstream() -> tuple[socket.socket, int]:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    return srv, srv.getsockname()[1]


def _relayed() -> tuple[socket.socket, PageRelay, socket.socket, socket.socket, list[str]]:
    """A relay between a page server's socket (``up``) and a lazy-pages daemon's (``daemon``):
    the listening upstream, the relay, both ends, and what the relay reported broken."""
    srv, port = _upstream()
    seen: list[str] = []
    relay = PageRelay(port, on_broken=seen.append)
    daemon = socket.create_connection(("127.0.0.1", relay.port))
    up, _ = srv.accept()
    return srv, relay, daemon, up, seen


def test_relay_calls_broken_when_upstream_ends_first() -> None:
    srv, relay, daemon, up, seen = _relayed()
    up.sendall(b"page")
    assert daemon.recv(4) == b"page"
    up.close()  # the source side goes away while the daemon still wants pages
    deadline = time.monotonic() + 10
    while not seen and time.monotonic() < deadline:
        time.sleep(0.05)
    assert seen and "closed" in seen[0]
    # Only after the container was stopped does the daemon see its socket close.
    assert daemon.recv(1) == b""
    relay.close()
    srv.close()


def test_relay_normal_end_is_not_broken() -> None:
    srv, relay, daemon, up, seen = _relayed()
    daemon.sendall(b"close")
    assert up.recv(5) == b"close"
    up.sendall(b"ok")
    up.close()  # the page server answers the close request and hangs up first ...
    assert daemon.recv(2) == b"ok"
    daemon.close()  # ... and the daemon closes within the grace period
    relay.close()
    srv.close()
    assert seen == []


def precheck_answer(answer: dict[str, Any]) -> PrecheckResult:
    """The agent's precheck answer, as the typed client returns it (``ok`` is always there)."""
    return PrecheckResult.model_validate({"ok": True, **answer})


@pytest.mark.parametrize(
    ("strategy", "source_why", "answer", "expect"),
    [
        ("lazy", None, {"lazy": {"ok": True, "why": ""}}, "lazy"),
        ("auto", None, {"lazy": {"ok": True, "why": ""}}, "lazy"),
        ("auto", None, {"lazy": {"ok": False, "why": "runc.conf sets work-dir"}}, "cold"),
        ("auto", "no uffd here", {}, "cold"),
        ("auto", None, {"ok": True}, "cold"),  # an agent that did not answer the question
        ("cold", "not asked", {}, "cold"),
    ],
)
def test_choose_strategy(
    strategy: str, source_why: str | None, answer: dict[str, Any], expect: str
) -> None:
    chosen, note = choose_strategy(strategy, source_why, precheck_answer(answer))
    assert chosen == expect
    assert bool(note) == (strategy == "auto" and expect == "cold")


@pytest.mark.parametrize(
    ("source_why", "answer", "word"),
    [
        (None, {"lazy": {"ok": False, "why": "runc.conf sets work-dir itself"}}, "work-dir"),
        ("`criu check --feature uffd-noncoop` fails on the source", {}, "uffd-noncoop"),
    ],
)
def test_lazy_refused_with_the_reason_and_a_fix(
    source_why: str | None, answer: dict[str, Any], word: str
) -> None:
    with pytest.raises(Unsupported) as ei:
        choose_strategy("lazy", source_why, precheck_answer(answer))
    assert word in ei.value.message and "--strategy cold" in ei.value.hint
    assert ei.value.exit_code == 3


def test_relay_thread_safety_smoke() -> None:
    # Closing a relay nobody connected to must not hang or call on_broken.
    seen: list[str] = []
    relay = PageRelay(1, on_broken=seen.append)
    t = threading.Thread(target=relay.close)
    t.start()
    t.join(10)
    assert not t.is_alive() and seen == []
