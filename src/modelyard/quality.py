"""Data-quality reports shared by every project's checks."""

from __future__ import annotations

import itertools
import json
from dataclasses import asdict, dataclass, field

from modelyard.errors import QualityError


SHOWN = 5  # examples in the printed report; the JSON report keeps up to STORED
STORED = 1000


@dataclass
class CheckResult:
    """One check: how many rows (or files) failed it and examples of them (up to STORED)."""

    name: str
    passed: bool
    n_failed: int = 0
    examples: list[str] = field(default_factory=list)
    detail: str = ""
    severity: str = "error"  # "error" stops the pipeline, "warning" is only reported


@dataclass
class QualityReport:
    subject: str
    checks: list[CheckResult] = field(default_factory=list)

    def add(self, name, n_failed, examples=(), detail="", severity="error") -> CheckResult:
        result = CheckResult(name, n_failed == 0, int(n_failed), [str(e) for e in itertools.islice(examples, STORED)], detail, severity)
        self.checks.append(result)
        return result

    @property
    def passed(self) -> bool:
        return all(c.passed or c.severity != "error" for c in self.checks)

    @property
    def failures(self) -> list[CheckResult]:
        return [c for c in self.checks if not c.passed and c.severity == "error"]

    def to_dict(self) -> dict:
        return {"subject": self.subject, "passed": self.passed, "checks": [asdict(c) for c in self.checks]}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def render_text(self) -> str:
        lines = [f"data quality {'passed' if self.passed else 'FAILED'} for {self.subject}"]
        for c in self.checks:
            status = "ok" if c.passed else ("WARN" if c.severity != "error" else "FAIL")
            line = f"  [{status}] {c.name}"
            if not c.passed:
                line += f": {c.n_failed} failing"
                if c.detail:
                    line += f" ({c.detail})"
                if c.examples:
                    line += "; e.g. " + "; ".join(c.examples[:SHOWN])
                    if len(c.examples) > SHOWN:
                        line += f"; {len(c.examples) - SHOWN} more listed in the JSON report"
            elif c.detail:
                line += f" ({c.detail})"
            lines.append(line)
        return "\n".join(lines)

    def raise_for_failures(self) -> None:
        if not self.passed:
            raise QualityError(self)
