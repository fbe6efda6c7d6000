"""What `migrate check` reports: the rows (core/checks.py :class:`CheckResult`, the problem and
the fix) gathered in a :class:`CheckReport`; ``required`` checks decide readiness."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from migrate.core.checks import CheckResult


@dataclass(frozen=True)
class CheckReport:
    results: tuple[CheckResult, ...]
    host: str = ""

    @property
    def ready(self) -> bool:
        """Every required check passed."""
        return all(r.ok for r in self.results if r.required)

    @property
    def failures(self) -> tuple[CheckResult, ...]:
        return tuple(r for r in self.results if r.status == "fail")

    @property
    def warnings(self) -> tuple[CheckResult, ...]:
        return tuple(r for r in self.results if r.status == "warn")

    def get(self, name: str) -> CheckResult | None:
        return next((r for r in self.results if r.name == name), None)

    def to_json(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "ready": self.ready,
            "checks": [r.to_json() for r in self.results],
        }


def summarize(results: Iterable[CheckResult]) -> str:
    """One line: how many checks failed / warned."""
    rs = list(results)
    fails = sum(r.status == "fail" for r in rs)
    warns = sum(r.status == "warn" for r in rs)
    if fails:
        return f"not ready: {fails} required check(s) failed, {warns} warning(s)"
    return f"ready ({warns} warning(s))" if warns else "ready"


def gib(n: int) -> str:
    return f"{n / (1 << 30):.1f} GiB"
