"""dr_site_provision against the sandbox's moto server (CloudFormation, Route53, S3 and the
services behind them, over HTTP, through the amazon provider's hooks and operators).

Each test provisions its own stack (a plan copy with its own stack name, resource names
and recovery subdomain), so tests do not see each other's stacks in moto's memory.

When the DAG runs, Then the plan's minimum stack is validated, created, waited on, and
its Outputs become the endpoints the plan maps them to (the sandbox's recovery site on
its own ports), and the stack really holds the network, database, hosts, load balancer,
bucket and names the template describes.
When it runs again, Then the stack is reused: nothing is created or updated.
When the plan changes a size, Then the same stack is updated, not created again.
When the template is broken, Then the guard fails with CloudFormation's message (moto's
server runs cfn-lint for ValidateTemplate) and no stack exists.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
import yaml

from tracktion_dr.airflow.dag_runs import run_dag, task_result, task_states
from tracktion_dr.core.errors import InvalidInput
from tracktion_dr.core.plan import load_plan
from tracktion_dr.core.site_templates import template_path
from tracktion_dr.scenarios import site
from tracktion_sandbox import layout as L
from tracktion_sandbox import s3

pytestmark = pytest.mark.sandbox

DAG_ID = "dr_site_provision"
ROOT = Path(__file__).resolve().parents[2]
SANDBOX_PLAN = ROOT / "include" / "config" / "sandbox.yaml"
EXPECTED_ENDPOINTS = {
    "tracktion": f"postgresql://127.0.0.1:{L.RECOVERY_SITE_PORTS['database']}/tracktion",
    "load_balancer": f"http://127.0.0.1:{L.RECOVERY_SITE_PORTS['load-balancer']}",
}


def cloudformation():
    return s3.client(L.S3_CROSS_REGION, "cloudformation")


def stacks_named(name: str) -> list[dict]:
    live = cloudformation().describe_stacks()["Stacks"]
    return [s for s in live if s["StackName"] == name and s["StackStatus"] != "DELETE_COMPLETE"]


def write_plan(tmp_path: Path, **recovery_site) -> Path:
    """The sandbox plan with its recovery site changed as given (both environments)."""
    data = yaml.safe_load(SANDBOX_PLAN.read_text())
    for environment in data["environments"].values():
        environment["recovery_site"] = {**environment["recovery_site"], **recovery_site}
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture()
def own_stack(sandbox, tmp_path, monkeypatch):
    """A plan whose recovery site is this test's own stack; yields (plan file, stack name)."""
    suffix = uuid.uuid4().hex[:8]
    name = f"tracktion-recovery-test-{suffix}"
    base = yaml.safe_load(SANDBOX_PLAN.read_text())["x-sandbox"]["recovery_site"]
    parameters = {
        **base["parameters"],
        "EnvironmentName": name,
        "RecoverySubdomain": f"recovery-{suffix}",
    }
    plan_file = write_plan(tmp_path, stack_name=name, parameters=parameters)
    monkeypatch.setenv("DR_PLAN", str(plan_file))
    return plan_file, name, parameters


def test_the_recovery_site_is_created_waited_on_and_its_outputs_mapped(own_stack):
    _, name, parameters = own_stack
    assert stacks_named(name) == []

    dag_run = run_dag(DAG_ID, {"environment": "drill"})
    states = task_states(dag_run)
    assert states["verdict"] == "success", states
    guard = task_result(dag_run, "guard")
    assert guard["action"] == "create" and guard["stack_status"] is None
    assert task_result(dag_run, "create_stack")["created"] is True
    assert states["wait_for_stack"] == "success"

    outputs = task_result(dag_run, "read_outputs")
    assert outputs["endpoints"] == EXPECTED_ENDPOINTS
    assert outputs["outputs"]["DatabasePort"] == "56432"
    assert outputs["outputs"]["LoadBalancerPort"] == "28080"
    assert task_result(dag_run, "record")["details"]["endpoints"] == EXPECTED_ENDPOINTS

    # CloudFormation itself: one complete stack, holding what the template describes.
    (stack,) = stacks_named(name)
    assert stack["StackStatus"] == "CREATE_COMPLETE"
    assert {o["OutputKey"]: o["OutputValue"] for o in stack["Outputs"]} == outputs["outputs"]
    resources = cloudformation().describe_stack_resources(StackName=name)["StackResources"]
    types = [r["ResourceType"] for r in resources]
    for kind, count in {
        "AWS::EC2::VPC": 1,
        "AWS::EC2::Subnet": 4,
        "AWS::EC2::SecurityGroup": 3,
        "AWS::RDS::DBInstance": 1,
        "AWS::AutoScaling::AutoScalingGroup": 1,
        "AWS::ElasticLoadBalancingV2::LoadBalancer": 1,
        "AWS::S3::Bucket": 1,
        "AWS::IAM::Role": 1,
        "AWS::Route53::RecordSet": 2,
    }.items():
        assert types.count(kind) == count, (kind, types)
    rds = s3.client(L.S3_CROSS_REGION, "rds").describe_db_instances()["DBInstances"]
    (database,) = [
        d for d in rds if d["Endpoint"]["Address"] == outputs["outputs"]["DatabaseAddress"]
    ]
    assert database["Engine"] == "postgres" and database["DBInstanceClass"] == "db.t3.medium"
    assert database["AllocatedStorage"] == 100 and database["Endpoint"]["Port"] == 56432
    groups = s3.client(L.S3_CROSS_REGION, "autoscaling").describe_auto_scaling_groups(
        AutoScalingGroupNames=[outputs["outputs"]["AppHostsGroup"]]
    )["AutoScalingGroups"]
    assert groups[0]["DesiredCapacity"] == 2, "the plan's minimum: two application hosts"
    # The site's names in the sandbox's hosted zone point at the stack's database and LB.
    route53 = s3.client(L.S3_REGION, "route53")
    zone_id = s3.ensure_hosted_zone()
    names = {
        r["Name"]: r["ResourceRecords"][0]["Value"]
        for r in route53.list_resource_record_sets(HostedZoneId=zone_id)["ResourceRecordSets"]
        if r["Type"] == "CNAME"
    }
    subdomain = f"{parameters['RecoverySubdomain']}.{L.HOSTED_ZONE}."
    assert names[f"db.{subdomain}"] == outputs["outputs"]["DatabaseAddress"]
    assert names[f"api.{subdomain}"] == outputs["outputs"]["LoadBalancerDNSName"]


def test_a_rerun_reuses_the_stack_and_a_changed_size_updates_it(own_stack, tmp_path, monkeypatch):
    _, name, parameters = own_stack
    first = run_dag(DAG_ID, {"environment": "drill"})
    assert task_states(first)["verdict"] == "success"
    (stack,) = stacks_named(name)

    again = run_dag(DAG_ID, {"environment": "drill"})
    states = task_states(again)
    assert states["verdict"] == "success", states
    assert task_result(again, "guard")["action"] == "reuse"
    assert task_result(again, "create_stack")["created"] is False
    assert task_result(again, "update_stack")["event"]["status"] == "skipped"
    (reused,) = stacks_named(name)
    assert reused["StackId"] == stack["StackId"] and reused["StackStatus"] == "CREATE_COMPLETE"
    assert task_result(again, "read_outputs")["endpoints"] == EXPECTED_ENDPOINTS

    # Three hosts instead of two: the same stack is updated.
    grown = write_plan(tmp_path, stack_name=name, parameters={**parameters, "InstanceCount": 3})
    monkeypatch.setenv("DR_PLAN", str(grown))
    updated = run_dag(DAG_ID, {"environment": "drill"})
    states = task_states(updated)
    assert states["verdict"] == "success", states
    guard = task_result(updated, "guard")
    assert guard["action"] == "update" and guard["changes"] == ["InstanceCount: '2' -> '3'"]
    assert task_result(updated, "create_stack")["created"] is False
    assert task_result(updated, "update_stack")["updated"] is True
    (after,) = stacks_named(name)
    assert after["StackId"] == stack["StackId"] and after["StackStatus"] == "UPDATE_COMPLETE"
    held = {p["ParameterKey"]: p["ParameterValue"] for p in after["Parameters"]}
    assert held["InstanceCount"] == "3"


def test_a_broken_template_fails_the_guard_with_cloudformations_message(
    own_stack, tmp_path, monkeypatch, capfd
):
    _, name, parameters = own_stack
    broken = tmp_path / "recovery-minimum-broken.yaml"
    text = template_path("minimum").read_text()
    # A subnet in a VPC the template does not declare: still YAML, same parameters and
    # Outputs (the plan loads), but not a template CloudFormation accepts.
    assert text.count("      VpcId: !Ref Vpc\n      CidrBlock: !Ref PublicSubnetACidr") == 1
    broken.write_text(
        text.replace(
            "      VpcId: !Ref Vpc\n      CidrBlock: !Ref PublicSubnetACidr",
            "      VpcId: !Ref RecoveryVpcThatDoesNotExist\n      CidrBlock: !Ref PublicSubnetACidr",
        )
    )
    plan_file = write_plan(
        tmp_path, stack_name=name, parameters=parameters, template_file=str(broken)
    )
    monkeypatch.setenv("DR_PLAN", str(plan_file))

    # The guard's check, as the DAG makes it: CloudFormation's own sentence, nothing made.
    plan = load_plan(plan_file)
    incident = {"environment": "drill", "dry_run": False, "incident_id": "DR-20261127-010000"}
    with pytest.raises(InvalidInput) as refused:
        site.check_inputs(
            plan, incident, {}, lambda conn_id, region: s3.client(region, "cloudformation")
        )
    assert refused.value.field == "recovery_site.template"
    assert "CloudFormation refused the template" in str(refused.value)
    assert "RecoveryVpcThatDoesNotExist" in str(refused.value)
    assert str(broken) in str(refused.value)

    capfd.readouterr()
    dag_run = run_dag(DAG_ID, {"environment": "drill"})
    states = task_states(dag_run)
    assert str(dag_run.state) == "failed"
    assert states["guard"] == "failed", states
    # The guard's failure, as the task log shows it: CloudFormation's message. (moto wraps
    # cfn-lint's sentence as "Stack with id '<sentence>' does not exist"; AWS says
    # "Template format error: Unresolved resource dependencies [...]".)
    log = "".join(capfd.readouterr())
    assert "refused, nothing was touched: recovery_site.template: CloudFormation refused" in log
    assert "RecoveryVpcThatDoesNotExist" in log
    assert {s for t, s in states.items() if t != "guard"} <= {
        "upstream_failed",
        "skipped",
        "success",
    }
    assert task_result(dag_run, "record")["refused"] is True
    assert stacks_named(name) == [], "nothing is created when the template is refused"
