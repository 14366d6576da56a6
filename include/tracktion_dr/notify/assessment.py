"""The assessment as a DR message."""

from __future__ import annotations

from tracktion_dr.notify.messages import DrMessage


def assessment_message(result: dict) -> DrMessage:
    incident = result["incident"]
    severity = {"OPERATIONAL": "info", "DEGRADED": "warning"}.get(result["status"], "error")
    lines = [f"{row['name']}: {row['status']} ({row['detail']})" for row in result["results"]]
    return DrMessage(
        title=f"DR assessment {incident['incident_id']} ({incident['environment']}): {result['status']}",
        text="\n".join(lines),
        severity=severity,  # type: ignore[arg-type]
        incident_id=incident["incident_id"],
        fields={
            "down": ", ".join(result["down"]) or "none",
            "degraded": ", ".join(result["degraded"]) or "none",
        },
    )
