"""DR messages, built once and rendered per channel.

Structured data in, channel payloads out: no JSON or e-mail assembled by string
concatenation (the seed's alert broke on a quote in a description).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Severity = Literal["info", "warning", "error", "critical"]
PagerDutyAction = Literal["trigger", "acknowledge", "resolve"]
# Statuspage incident states.
StatusPageStatus = Literal["investigating", "identified", "monitoring", "resolved"]


@dataclass(frozen=True)
class DrMessage:
    title: str
    text: str
    severity: Severity = "info"
    incident_id: str | None = None
    fields: dict[str, str] = field(default_factory=dict)
    # Stable key so repeated alerts about one incident group together (PagerDuty dedup_key).
    dedup_key: str | None = None
    # What the message means for a PagerDuty incident: open it, acknowledge it, close it.
    pagerduty_action: PagerDutyAction = "trigger"
    # The status page state this message sets (default: derived from the severity).
    status_page_status: StatusPageStatus | None = None

    def plain_text(self) -> str:
        lines = [self.title, "", self.text]
        if self.fields:
            lines.append("")
            lines.extend(f"{name}: {value}" for name, value in self.fields.items())
        return "\n".join(lines)

    def slack_text(self) -> str:
        marker = {"info": "ℹ️", "warning": "⚠️", "error": "❌", "critical": "🚨"}[self.severity]
        lines = [f"{marker} *{self.title}*", self.text]
        lines.extend(f"• *{name}*: {value}" for name, value in self.fields.items())
        return "\n".join(lines)
