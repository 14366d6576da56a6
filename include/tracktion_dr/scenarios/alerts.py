"""Alerts from monitoring, parsed and routed: the library behind ``POST /dr/alerts/{source}``.

Three real webhook formats are understood - Prometheus Alertmanager (webhook ``version``
"4"), Grafana unified alerting, and PagerDuty webhooks v3 - and each becomes a list of
:class:`Alert` (source, fingerprint, firing/resolved, labels). The plan's ``alert_routes``
map an alert to a DAG and its conf (first matching route wins). Dedup is by fingerprint:
the run id of an alert's run is ``alert__<source>__<fingerprint>__<n>``, so an active run
for a fingerprint is found by its run id, and two concurrent posts of one alert compute the
same id - the database's unique run id lets exactly one of them start it.

Plain Python: the Airflow plugin (``plugins/dr_alert_webhook.py``) does the DB part.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from tracktion_dr.core.errors import DrError
from tracktion_dr.core.incident import CLOCK_SKEW_ALLOWANCE, MAX_INCIDENT_AGE
from tracktion_dr.core.plan import AlertRoute, Plan

SOURCES = ("alertmanager", "grafana", "pagerduty")
AlertStatus = Literal["firing", "resolved", "ignored"]


class MalformedPayload(DrError, ValueError):
    """The body is not the sender's webhook format; the message says what is wrong."""


@dataclass(frozen=True)
class Alert:
    source: str
    fingerprint: str
    status: AlertStatus
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)
    starts_at: str | None = None

    @property
    def summary(self) -> str:
        for key in ("description", "summary", "message", "title"):
            if self.annotations.get(key):
                return self.annotations[key]
        return self.labels.get("alertname") or self.labels.get("title") or self.fingerprint

    def run_id_prefix(self) -> str:
        return f"alert__{self.source}__{_safe(self.fingerprint)}__"


_RUN_ID_SAFE = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")


def _safe(fingerprint: str) -> str:
    """Fingerprints go into run ids: keep simple ones, hash anything else."""
    if _RUN_ID_SAFE.match(fingerprint) and "__" not in fingerprint:
        return fingerprint
    return hashlib.sha256(fingerprint.encode()).hexdigest()[:32]


def _labels_fingerprint(labels: dict[str, str]) -> str:
    text = "\n".join(f"{k}={v}" for k, v in sorted(labels.items()))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _require(mapping: Any, key: str, kind: type, where: str) -> Any:
    if not isinstance(mapping, dict) or key not in mapping:
        raise MalformedPayload(f"{where}: missing field {key!r}")
    value = mapping[key]
    if not isinstance(value, kind):
        raise MalformedPayload(f"{where}.{key}: expected {kind.__name__}")
    return value


def _string_map(value: Any, where: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise MalformedPayload(f"{where}: expected an object of strings")
    return {str(k): str(v) for k, v in value.items()}


def _prometheus_style(payload: Any, source: str) -> list[Alert]:
    """Alertmanager v4 and Grafana unified alerting share the alert shape."""
    if not isinstance(payload, dict):
        raise MalformedPayload("body: expected a JSON object")
    if source == "alertmanager" and str(payload.get("version")) != "4":
        raise MalformedPayload(
            f"version: expected Alertmanager webhook version '4', got {payload.get('version')!r}"
        )
    alerts = _require(payload, "alerts", list, "body")
    if not alerts:
        raise MalformedPayload("alerts: empty")
    parsed = []
    for i, raw in enumerate(alerts):
        where = f"alerts[{i}]"
        status = _require(raw, "status", str, where)
        if status not in ("firing", "resolved"):
            raise MalformedPayload(f"{where}.status: expected firing or resolved, got {status!r}")
        labels = _string_map(_require(raw, "labels", dict, where), f"{where}.labels")
        fingerprint = str(raw.get("fingerprint") or "") or _labels_fingerprint(labels)
        parsed.append(
            Alert(
                source=source,
                fingerprint=fingerprint,
                status=status,  # type: ignore[arg-type]
                labels=labels,
                annotations=_string_map(raw.get("annotations"), f"{where}.annotations"),
                starts_at=raw.get("startsAt") if isinstance(raw.get("startsAt"), str) else None,
            )
        )
    return parsed


_PAGERDUTY_STATUS: dict[str, AlertStatus] = {
    "incident.triggered": "firing",
    "incident.reopened": "firing",
    "incident.resolved": "resolved",
}


def _pagerduty(payload: Any) -> list[Alert]:
    """PagerDuty webhooks v3: one event per delivery, ``event.data`` is the incident."""
    event = _require(payload, "event", dict, "body")
    event_type = _require(event, "event_type", str, "event")
    data = _require(event, "data", dict, "event")
    incident_id = _require(data, "id", str, "event.data")
    service = data.get("service") if isinstance(data.get("service"), dict) else {}
    labels = {
        "event_type": event_type,
        "service": str(service.get("summary") or service.get("id") or ""),
        "urgency": str(data.get("urgency") or ""),
        "title": str(data.get("title") or ""),
    }
    return [
        Alert(
            source="pagerduty",
            fingerprint=incident_id,
            status=_PAGERDUTY_STATUS.get(event_type, "ignored"),
            labels={k: v for k, v in labels.items() if v},
            annotations={"title": str(data.get("title") or "")},
            starts_at=data.get("created_at") or event.get("occurred_at"),
        )
    ]


def parse_alerts(source: str, payload: Any) -> list[Alert]:
    if source == "pagerduty":
        return _pagerduty(payload)
    if source in ("alertmanager", "grafana"):
        return _prometheus_style(payload, source)
    raise MalformedPayload(f"source: {source!r} is not one of {list(SOURCES)}")


def find_route(plan: Plan, alert: Alert) -> AlertRoute | None:
    for route in plan.alert_routes:
        if alert.source not in route.sources:
            continue
        if all(alert.labels.get(key) == value for key, value in route.match.items()):
            return route
    return None


def clock_start(starts_at: str | None, now: datetime) -> str | None:
    """The alert's start as the incident clock start, when it is a usable one (the
    guard refuses future or week-old starts; such an alert runs on the run's own start)."""
    if not starts_at:
        return None
    text = starts_at.strip().replace("Z", "+00:00")
    # Alertmanager writes nanoseconds; Python parses at most microseconds.
    text = re.sub(r"(\.\d{6})\d+", r"\1", text)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    if moment.tzinfo is None or moment.year < 2000:  # "0001-01-01T00:00:00Z" = unset
        return None
    moment = moment.astimezone(UTC)
    if moment > now + CLOCK_SKEW_ALLOWANCE or now - moment > MAX_INCIDENT_AGE - timedelta(hours=1):
        return None
    return moment.isoformat()


class UnroutableAlert(DrError, ValueError):
    """The route that matched names an alert label the alert does not carry."""


_LABEL = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


def fill_labels(value: Any, labels: dict[str, str], where: str) -> Any:
    """``{label}`` in the route's conf strings -> the alert's label value (recursively)."""
    if isinstance(value, str):

        def label(match: re.Match[str]) -> str:
            name = match.group(1)
            if name not in labels:
                raise UnroutableAlert(
                    f"{where}: the route needs the alert label {name!r}, which the alert lacks"
                )
            return labels[name]

        return _LABEL.sub(label, value)
    if isinstance(value, list):
        return [fill_labels(v, labels, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, dict):
        return {k: fill_labels(v, labels, f"{where}.{k}") for k, v in value.items()}
    return value


def run_conf(route: AlertRoute, alert: Alert, incident_id: str, now: datetime) -> dict[str, Any]:
    conf: dict[str, Any] = {
        **fill_labels(route.conf, alert.labels, f"alert_routes[{route.name}].conf"),
        "incident_id": incident_id,
    }
    started = clock_start(alert.starts_at, now)
    if started:
        conf["incident_started_at"] = started
    if route.dag_id == "dr_incident_response":
        conf.setdefault("description", f"[{alert.source}] {alert.summary}"[:2000])
    return conf
