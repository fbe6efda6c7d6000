"""One row of a readiness check (`migrate check`): what was found, the problem and its fix.
Below every layer that checks something: the engines judge their own daemon with it, the
source gathers the rows into a report."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class CheckResult:
    name: str  # stable identifier (JSON consumers and tests rely on it)
    ok: bool
    value: str  # what was found
    problem: str = ""  # why it is not ok ("" when ok)
    fix: str = ""  # what to do about it
    required: bool = True  # False: a warning, readiness does not depend on it

    @property
    def status(self) -> str:
        """ "ok", "fail" (required and not ok) or "warn" (not required and not ok)."""
        if self.ok:
            return "ok"
        return "fail" if self.required else "warn"

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "ok": self.ok,
            "status": self.status,
            "required": self.required,
            "value": self.value,
            "problem": self.problem,
            "fix": self.fix,
        }
