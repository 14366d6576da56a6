"""The plan's recovery_site and dns sections (whole-site disaster, scenario 5), their
CloudFormation templates, and the decisions made from them: mistakes are named with the
field path at load; the stack's Outputs become the recovery's endpoints; the stack as it
is decides what a run does."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from tracktion_dr.core.errors import StepFailed
from tracktion_dr.core.plan import PlanError, load_plan, parse_plan
from tracktion_dr.core.site_templates import (
    TEMPLATE_NAMES,
    template_document,
    template_outline,
    template_path,
)
from tracktion_dr.scenarios import network_dns, site
from tracktion_dr.services import cloudformation as cfn
from tracktion_dr.services.cloudformation import StackState

ROOT = Path(__file__).resolve().parents[2]
SANDBOX_PLAN = ROOT / "include" / "config" / "sandbox.yaml"
PRODUCTION_PLAN = ROOT / "include" / "config" / "tracktion.yaml"


@pytest.fixture()
def data() -> dict:
    return yaml.safe_load(SANDBOX_PLAN.read_text())


def drill(data: dict) -> dict:
    """The drill environment's own copy (the sandbox's environments share one anchor)."""
    environment = copy.deepcopy(data["environments"]["drill"])
    data["environments"]["drill"] = environment
    return environment


def problems_of(data: dict) -> str:
    with pytest.raises(PlanError) as caught:
        parse_plan(data, "plan.yaml")
    return str(caught.value)


# --- the templates -------------------------------------------------------------------------


@pytest.mark.parametrize("name", TEMPLATE_NAMES)
def test_templates_pass_cfn_lint_without_a_single_finding(name):
    """moto's ValidateTemplate (the sandbox's CloudFormation) refuses a template on
    cfn-lint's first finding of any level, warnings included; AWS accepts it too."""
    from cfnlint.api import lint
    from cfnlint.core import get_rules

    # Exactly the check moto makes (moto/cloudformation/utils.py): default rules, us-east-1.
    assert lint(template_path(name).read_text(), get_rules([], [], []), ["us-east-1"]) == []


def test_both_templates_give_the_outputs_a_recovery_needs():
    needed = {"DatabaseAddress", "DatabasePort", "LoadBalancerDNSName", "ServiceURL", "VpcId"}
    for name in TEMPLATE_NAMES:
        outline = template_outline(template_path(name))
        assert needed <= outline.outputs, (name, needed - outline.outputs)
        assert outline.required_parameters == ["BackupBucketName", "ImageId"]
    assert "DatabaseReplicaAddress" in template_outline(template_path("full")).outputs
    assert "ReplicaClass" in template_outline(template_path("full")).parameters


def test_templates_default_to_the_plans_sizes():
    minimum = template_document(template_path("minimum"))["Parameters"]
    full = template_document(template_path("full"))["Parameters"]
    assert (minimum["InstanceType"]["Default"], minimum["InstanceCount"]["Default"]) == (
        "c5.large",
        2,
    )
    assert (minimum["DatabaseClass"]["Default"], minimum["StorageSize"]["Default"]) == (
        "db.t3.medium",
        100,
    )
    assert (full["InstanceType"]["Default"], full["InstanceCount"]["Default"]) == ("c5.xlarge", 4)
    assert (full["DatabaseClass"]["Default"], full["StorageSize"]["Default"]) == (
        "db.r5.xlarge",
        500,
    )
    assert full["ReplicaClass"]["Default"] == "db.r5.large"


# --- plan validation -----------------------------------------------------------------------


def test_shipped_plans_have_a_recovery_site_and_dns():
    for path in (SANDBOX_PLAN, PRODUCTION_PLAN):
        production = load_plan(path).environment("production")
        assert production.recovery_site and production.recovery_site.template == "minimum"
        assert production.recovery_site.region == "us-west-2"
        assert production.dns and any(r.allow_switch for r in production.dns.records.values())
    sandbox = load_plan(SANDBOX_PLAN).environment("drill").recovery_site
    assert sandbox.parameters["DatabasePort"] == "56432", "numbers are CloudFormation strings"


def test_a_parameter_the_template_does_not_take_is_named(data):
    drill(data)["recovery_site"]["parameters"]["InstanceTyp"] = "c5.large"
    text = problems_of(data)
    assert (
        "environments.drill.recovery_site: parameters ['InstanceTyp'] are not parameters of the minimum template"
        in text
    )


def test_a_required_parameter_is_named(data):
    del drill(data)["recovery_site"]["parameters"]["ImageId"]
    assert (
        "environments.drill.recovery_site: the minimum template needs parameters ['ImageId']"
        in problems_of(data)
    )


def test_a_parameter_only_the_full_template_takes(data):
    recovery_site = drill(data)["recovery_site"]
    recovery_site["parameters"]["ReplicaClass"] = "db.r5.large"
    assert "['ReplicaClass'] are not parameters of the minimum template" in problems_of(data)
    recovery_site["template"] = "full"
    parse_plan(data, "plan.yaml")


def test_an_endpoint_from_an_output_the_template_lacks(data):
    drill(data)["recovery_site"]["endpoints"]["tracktion"] = (
        "postgresql://{DbHost}:{DatabasePort}/tracktion"
    )
    text = problems_of(data)
    assert "endpoints.tracktion: ['DbHost'] are not Outputs of the minimum template" in text


@pytest.mark.parametrize(
    "url, reason",
    [
        ("127.0.0.1:{DatabasePort}", "is not a URL"),
        ("postgresql://{Database Port}/x", "is not an output name"),
        ("postgresql://{DatabasePort:>5}/x", "is not an output name"),
        ("postgresql://{DatabasePort/x", "write outputs as {OutputKey}"),
    ],
)
def test_endpoint_templates_are_urls_of_output_names(data, url, reason):
    drill(data)["recovery_site"]["endpoints"]["tracktion"] = url
    assert reason in problems_of(data)


def test_an_endpoint_names_a_database_service_or_the_load_balancer(data):
    drill(data)["recovery_site"]["endpoints"]["ledger"] = "postgresql://x:{DatabasePort}/l"
    text = problems_of(data)
    assert (
        "environments.drill.recovery_site.endpoints.ledger: not a database, service or load_balancer"
        in text
    )


@pytest.mark.parametrize(
    "field, value, reason",
    [
        ("region", "us-west", "String should match pattern"),
        ("stack_name", "1-stack", "String should match pattern"),
        ("template", "medium", "Input should be 'minimum' or 'full'"),
        ("tier", "platinum", "unknown tier 'platinum'"),
        ("template_file", "relative.yaml", "template_file must be an absolute path"),
        ("create_timeout", "600", "not a duration"),
    ],
)
def test_recovery_site_fields(data, field, value, reason):
    drill(data)["recovery_site"][field] = value
    text = problems_of(data)
    assert "environments.drill.recovery_site" in text and reason in text, text


def test_a_template_file_that_is_not_there(data, tmp_path):
    drill(data)["recovery_site"]["template_file"] = str(tmp_path / "missing.yaml")
    assert "cannot read the template" in problems_of(data)


@pytest.mark.parametrize(
    "change, reason",
    [
        (
            {
                "type": "CNAME",
                "primary": {
                    "values": ["a.example.com", "b.example.com"],
                    "health_url": "http://h/health",
                },
            },
            "a CNAME record holds exactly one value",
        ),
        (
            {
                "type": "A",
                "primary": {"values": ["lb.example.com"], "health_url": "http://h/health"},
            },
            "'lb.example.com' is not an IP address",
        ),
        (
            {"type": "AAAA", "primary": {"values": ["10.0.0.1"], "health_url": "http://h/health"}},
            "is not an IPv4 record",
        ),
        ({"allow_switch": True, "secondary": None}, "allow_switch needs a secondary"),
        (
            {
                "secondary": {
                    "values": ["LB.primary.tracktion-sandbox.test."],
                    "health_url": "http://h/health",
                }
            },
            "must differ from the primary's",
        ),
        (
            {"primary": {"values": ["lb.example.com"], "health_url": "ftp://h"}},
            "not an http(s) URL",
        ),
    ],
)
def test_dns_records_are_checked(data, change, reason):
    record = drill(data)["dns"]["records"]["api.tracktion-sandbox.test"]
    record.update(change)
    text = problems_of(data)
    assert "environments.drill.dns.records" in text and reason in text, text


def test_dns_records_must_be_in_the_zone_and_viewpoints_well_formed(data):
    dns = drill(data)["dns"]
    dns["records"]["api.example.com"] = dns["records"]["status.tracktion-sandbox.test"]
    assert (
        "records ['api.example.com'] are not in the hosted zone tracktion-sandbox.test"
        in problems_of(data)
    )
    del dns["records"]["api.example.com"]
    dns["viewpoints"].append({"name": "google", "kind": "resolver"})
    assert "a resolver viewpoint needs address, an IP address" in problems_of(data)
    dns["viewpoints"][-1]["address"] = "8.8.8.8"
    parse_plan(data, "plan.yaml")
    dns["tier"] = "gold"
    assert "environments.drill.dns.tier: unknown tier 'gold'" in problems_of(data)


# --- the stack's Outputs -> the recovery's endpoints ----------------------------------------


def test_outputs_become_the_endpoints():
    endpoints = site.endpoints_from_outputs(
        {
            "tracktion": "postgresql://{DatabaseAddress}:{DatabasePort}/tracktion",
            "load_balancer": "{ServiceURL}",
            "analysis-service": "http://127.0.0.1:28001",
        },
        {
            "DatabaseAddress": "db.abc.us-west-2.rds.amazonaws.com",
            "DatabasePort": "5432",
            "ServiceURL": "https://lb-1.us-west-2.elb.amazonaws.com:443",
        },
    )
    assert endpoints == {
        "tracktion": "postgresql://db.abc.us-west-2.rds.amazonaws.com:5432/tracktion",
        "load_balancer": "https://lb-1.us-west-2.elb.amazonaws.com:443",
        "analysis-service": "http://127.0.0.1:28001",
    }


def test_a_missing_output_is_named_with_its_endpoint():
    with pytest.raises(StepFailed) as failed:
        site.endpoints_from_outputs(
            {"tracktion": "postgresql://{DatabaseAddress}:{DatabasePort}/t"},
            {"DatabasePort": "5432"},
        )
    assert "no Outputs ['DatabaseAddress'] (for tracktion)" in str(failed.value)
    with pytest.raises(StepFailed, match="not a URL"):
        site.endpoints_from_outputs({"load_balancer": "{VpcId}"}, {"VpcId": "vpc-123"})


def test_the_sandbox_plan_maps_to_the_recovery_sites_ports():
    from tracktion_sandbox import layout as L

    recovery_site = load_plan(SANDBOX_PLAN).environment("drill").recovery_site
    outputs = {
        "DatabasePort": recovery_site.parameters["DatabasePort"],
        "LoadBalancerPort": recovery_site.parameters["LoadBalancerPort"],
    }
    endpoints = site.endpoints_from_outputs(recovery_site.endpoints, outputs)
    assert endpoints["tracktion"].endswith(f":{L.RECOVERY_SITE_PORTS['database']}/tracktion")
    assert endpoints["load_balancer"].endswith(f":{L.RECOVERY_SITE_PORTS['load-balancer']}")


# --- what a run does with the stack as it is ------------------------------------------------


def state(status: str, **parameters: str) -> StackState:
    return StackState("tracktion-recovery", "arn:stack", status, parameters=parameters)


def test_the_stack_as_it_is_decides_the_action():
    assert site.decide(None, [], []) == site.CREATE
    assert site.decide(state("CREATE_IN_PROGRESS"), [], []) == site.WAIT
    assert site.decide(state("UPDATE_COMPLETE_CLEANUP_IN_PROGRESS"), [], []) == site.WAIT
    assert site.decide(state("CREATE_COMPLETE"), [], []) == site.REUSE
    assert site.decide(state("UPDATE_ROLLBACK_COMPLETE"), ["template"], []) == site.UPDATE
    with pytest.raises(site.StackUnusable) as refused:
        site.decide(state("ROLLBACK_COMPLETE"), [], ["Database CREATE_FAILED: quota exceeded"])
    assert (
        "ROLLBACK_COMPLETE and cannot be used or updated: Database CREATE_FAILED: quota exceeded"
        in str(refused.value)
    )
    assert "a recovery never does" in str(refused.value)


def test_differences_name_the_template_and_each_parameter():
    current = state("CREATE_COMPLETE", InstanceCount="2", ImageId="ami-1")
    assert cfn.differences(current, "body\n", "body", {"InstanceCount": "2"}) == []
    assert cfn.differences(current, "old", "new", {"InstanceCount": "3", "StorageSize": "100"}) == [
        "template",
        "InstanceCount: '2' -> '3'",
        "StorageSize: None -> '100'",
    ]


# --- DNS decisions --------------------------------------------------------------------------


def test_a_records_side_and_its_target():
    record = load_plan(SANDBOX_PLAN).environment("drill").dns.records["api.tracktion-sandbox.test"]
    assert network_dns.side_of(record, ["LB.Primary.tracktion-sandbox.test."]) == "primary"
    assert network_dns.side_of(record, ["api.recovery.tracktion-sandbox.test"]) == "secondary"
    assert network_dns.side_of(record, ["elsewhere.example.com"]) is None
    assert network_dns.side_of(record, None) is None
    assert network_dns.target_side("failover", record, "primary") == "secondary"
    assert network_dns.target_side("failback", record, "secondary") == "primary"
    assert network_dns.target_side("verify", record, "secondary") == "secondary"


class _PendingRoute53:
    """A change Route53 has not finished (moto's server reports every change INSYNC at
    once, so the slow path is shown here)."""

    def __init__(self, pending_polls: int):
        self.polls = 0
        self.pending_polls = pending_polls

    def get_change(self, Id):  # noqa: N803 - boto3's spelling
        self.polls += 1
        status = "PENDING" if self.polls <= self.pending_polls else "INSYNC"
        return {"ChangeInfo": {"Id": Id, "Status": status}}


def test_waiting_for_insync_polls_until_served_and_gives_up_at_the_plans_limit():
    plan = load_plan(SANDBOX_PLAN)
    run = {"environment": "drill", "sync_timeout_seconds": 10}
    now = [0.0]

    def sleep(seconds: float) -> None:
        now[0] += seconds

    route53 = _PendingRoute53(pending_polls=3)
    done = network_dns.wait_in_sync(plan, run, "C1", lambda _: route53, sleep, lambda: now[0])
    assert done["detail"] == "change C1 INSYNC" and route53.polls == 4
    stuck = _PendingRoute53(pending_polls=100)
    with pytest.raises(StepFailed, match="Route53 change C2 still PENDING after 10s"):
        network_dns.wait_in_sync(plan, run, "C2", lambda _: stuck, sleep, lambda: now[0])
    assert network_dns.wait_in_sync(plan, run, None, lambda _: stuck)["status"] == "skipped"
