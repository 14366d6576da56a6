"""dr_network_dns against the sandbox's moto server (Route53 over HTTP, through the amazon
provider's AwsBaseHook) and real HTTP endpoints.

The sandbox's hosted zone holds the plan's records (made by the fixture, on the primary
values): api (switchable) points at the sandbox's load balancer (18080), status (verified
only) at the notification sink. api's secondary is the recovery site's load balancer
(28080), which answers only while a test runs a stand-in for it. No DNS server serves
moto's zones: the sandbox plan's one viewpoint reads the zone through the Route53 API.

When the records are verified, Then they resolve to sites that answer and nothing changes.
When the secondary answers and the DAG fails over, Then api is UPSERTed to the secondary
in one change, the change is INSYNC, the gate sees it, status is left alone; a re-run
changes nothing; failback puts api back on the primary.
When the secondary does not answer, Then the failover is refused before anything changes.
When a record points at a site that is down, Then a verification fails the run.
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tracktion_dr.airflow.dag_runs import run_dag, task_result, task_states
from tracktion_dr.core.errors import FailoverRefused
from tracktion_dr.core.plan import load_plan
from tracktion_dr.scenarios import network_dns
from tracktion_sandbox import layout as L
from tracktion_sandbox import s3

pytestmark = pytest.mark.sandbox

DAG_ID = "dr_network_dns"
API = f"api.{L.HOSTED_ZONE}"
STATUS = f"status.{L.HOSTED_ZONE}"


def route53():
    return s3.client(L.S3_REGION, "route53")


def held(zone_id: str, name: str, record_type: str) -> list[str]:
    answer = route53().list_resource_record_sets(
        HostedZoneId=zone_id, StartRecordName=name + ".", StartRecordType=record_type, MaxItems="1"
    )["ResourceRecordSets"]
    assert answer and answer[0]["Name"] == name + ".", answer
    return [r["Value"].rstrip(".") for r in answer[0]["ResourceRecords"]]


def upsert(zone_id: str, name: str, record_type: str, values: list[str], ttl: int = 60) -> None:
    route53().change_resource_record_sets(
        HostedZoneId=zone_id,
        ChangeBatch={
            "Changes": [
                {
                    "Action": "UPSERT",
                    "ResourceRecordSet": {
                        "Name": name + ".",
                        "Type": record_type,
                        "TTL": ttl,
                        "ResourceRecords": [{"Value": v} for v in values],
                    },
                }
            ]
        },
    )


@pytest.fixture()
def zone(sandbox):
    """The plan's records in the sandbox's zone, on their primary values; put back after."""
    dns = load_plan().environment("drill").dns
    zone_id = s3.ensure_hosted_zone()
    for name, record in dns.records.items():
        upsert(zone_id, name, record.type, record.primary.values, record.ttl)
    yield zone_id, dns
    for name, record in dns.records.items():
        upsert(zone_id, name, record.type, record.primary.values, record.ttl)


class _Health(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802
        body = b'{"status": "healthy", "service": "recovery-site-load-balancer"}'
        self.send_response(200 if self.path == "/health" else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture()
def recovery_site_lb():
    """A stand-in for the recovery site's load balancer: /health answers on its port."""
    server = ThreadingHTTPServer((L.HOST, L.RECOVERY_SITE_PORTS["load-balancer"]), _Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_verification_finds_the_records_on_sites_that_answer(zone):
    zone_id, dns = zone
    dag_run = run_dag(DAG_ID, {"environment": "drill", "action": "verify"})
    states = task_states(dag_run)
    assert states["verdict"] == "success", states
    guard = task_result(dag_run, "guard")
    assert {name: r["on"] for name, r in guard["records"].items()} == {
        API: "primary",
        STATUS: "primary",
    }
    assert task_result(dag_run, "verify_before")["problems"] == {}
    assert task_result(dag_run, "switch_records")["event"]["status"] == "skipped"
    assert held(zone_id, API, "CNAME") == dns.records[API].primary.values


def test_failover_switches_waits_in_sync_and_a_rerun_changes_nothing(zone, recovery_site_lb):
    zone_id, dns = zone
    api = dns.records[API]
    dag_run = run_dag(DAG_ID, {"environment": "drill", "action": "failover"})
    states = task_states(dag_run)
    assert states["verdict"] == "success", states
    guard = task_result(dag_run, "guard")
    assert list(guard["records"]) == [API], "only records the plan allows to switch"
    assert guard["records"][API]["change"] is True
    switched = task_result(dag_run, "switch_records")
    assert switched["switched"] == [API] and switched["change_id"]
    assert route53().get_change(Id=switched["change_id"])["ChangeInfo"]["Status"] == "INSYNC"
    assert task_result(dag_run, "wait_in_sync")["change_id"] == switched["change_id"]
    assert task_result(dag_run, "gate_dns")["event"]["status"] == "succeeded"
    assert held(zone_id, API, "CNAME") == api.secondary.values
    assert held(zone_id, STATUS, "A") == dns.records[STATUS].primary.values, (
        "not allowed: untouched"
    )

    again = run_dag(DAG_ID, {"environment": "drill", "action": "failover"})
    states = task_states(again)
    assert states["verdict"] == "success", states
    assert task_result(again, "guard")["records"][API]["change"] is False
    unchanged = task_result(again, "switch_records")
    assert unchanged["change_id"] is None and unchanged["switched"] == []
    assert task_result(again, "wait_in_sync")["event"]["status"] == "skipped"
    assert held(zone_id, API, "CNAME") == api.secondary.values

    back = run_dag(DAG_ID, {"environment": "drill", "action": "failback"})
    assert task_states(back)["verdict"] == "success"
    assert task_result(back, "switch_records")["switched"] == [API]
    assert held(zone_id, API, "CNAME") == api.primary.values


def test_failover_to_a_secondary_that_does_not_answer_is_refused(zone, capfd):
    zone_id, dns = zone
    plan = load_plan()
    incident = {"environment": "drill", "dry_run": False, "incident_id": "DR-20261127-020000"}
    with pytest.raises(FailoverRefused) as refused:
        network_dns.check_inputs(plan, incident, {"action": "failover"}, lambda conn_id: route53())
    assert f"{API}: its secondary http://127.0.0.1:28080/health does not answer" in str(
        refused.value
    )

    capfd.readouterr()
    dag_run = run_dag(DAG_ID, {"environment": "drill", "action": "failover"})
    states = task_states(dag_run)
    assert str(dag_run.state) == "failed"
    assert states["guard"] == "failed", states
    assert {s for t, s in states.items() if t != "guard"} <= {
        "upstream_failed",
        "skipped",
        "success",
    }
    assert "nothing was switched" in "".join(capfd.readouterr())
    assert held(zone_id, API, "CNAME") == dns.records[API].primary.values


def test_a_record_on_a_site_that_is_down_fails_the_verification(zone):
    zone_id, dns = zone
    # api points at the recovery site, whose load balancer is not running.
    upsert(zone_id, API, "CNAME", dns.records[API].secondary.values)
    dag_run = run_dag(DAG_ID, {"environment": "drill", "action": "verify"})
    states = task_states(dag_run)
    assert states["verify_before"] == "failed" and states["verdict"] == "failed", states
    problems = task_result(dag_run, "verify_before")["problems"]
    assert list(problems) == [API]
    assert (
        "on the secondary (http://127.0.0.1:28080/health), which does not answer" in problems[API]
    )
    assert held(zone_id, API, "CNAME") == dns.records[API].secondary.values, (
        "verify changes nothing"
    )
