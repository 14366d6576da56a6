"""DNS records: what Route53 holds, what a resolver answers, and a Route53 change.

Works on a boto3 Route53 client (the Airflow layer gets it through the amazon provider's
``AwsBaseHook``). A viewpoint is where a record is looked at from: ``route53_api`` reads
the hosted zone through the Route53 API (what its authoritative servers serve once a
change is INSYNC); ``resolver`` asks a DNS resolver (dnspython, with a timeout), i.e.
what clients behind that resolver see, caches included.
"""

from __future__ import annotations

import logging
from typing import Any

from tracktion_dr.core.errors import InvalidInput, StepFailed

log = logging.getLogger(__name__)

INSYNC = "INSYNC"


class DnsError(StepFailed):
    """Route53 or a resolver could not answer or refused a change."""


def fqdn(name: str) -> str:
    """``api.example.com.``: lower case, with the root's dot (Route53's spelling)."""
    return name.strip().lower().rstrip(".") + "."


def plain(value: str) -> str:
    """A record value compared without case or the root's dot."""
    return value.strip().lower().rstrip(".")


def same_values(a: list[str] | None, b: list[str] | None) -> bool:
    return a is not None and b is not None and sorted(map(plain, a)) == sorted(map(plain, b))


def _message(exc: Exception) -> str:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return str((response.get("Error") or {}).get("Message") or exc)
    return str(exc)


def hosted_zone_id(client: Any, zone: str) -> str:
    """The id of the public hosted zone named ``zone``; refused when Route53 has none."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        zones = client.list_hosted_zones_by_name(DNSName=fqdn(zone))["HostedZones"]
    except (ClientError, BotoCoreError) as exc:
        raise DnsError(f"Route53 does not answer: {_message(exc)}") from None
    for found in zones:
        if found["Name"] == fqdn(zone) and not found.get("Config", {}).get("PrivateZone"):
            return str(found["Id"]).removeprefix("/hostedzone/")
    raise InvalidInput(
        "dns.hosted_zone",
        f"Route53 has no public hosted zone {zone}",
        hint="check the plan's dns.hosted_zone and the AWS connection's account",
    )


def route53_values(client: Any, zone_id: str, name: str, record_type: str) -> list[str] | None:
    """The values Route53 holds for the record (None: no such record)."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        answer = client.list_resource_record_sets(
            HostedZoneId=zone_id,
            StartRecordName=fqdn(name),
            StartRecordType=record_type,
            MaxItems="1",
        )
    except (ClientError, BotoCoreError) as exc:
        raise DnsError(f"Route53 does not answer for {name}: {_message(exc)}") from None
    for record in answer.get("ResourceRecordSets", []):
        if fqdn(record["Name"]) == fqdn(name) and record["Type"] == record_type:
            if "AliasTarget" in record:
                return [plain(record["AliasTarget"]["DNSName"])]
            return [plain(r["Value"]) for r in record.get("ResourceRecords", [])]
    return None


def resolver_values(
    address: str, port: int, name: str, record_type: str, timeout: float
) -> list[str] | None:
    """What the resolver at ``address`` answers for the record (None: no such name or no
    record of that type). A resolver that does not answer in time is a DnsError."""
    import dns.exception
    import dns.resolver

    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = [address]
    resolver.port = port
    try:
        answer = resolver.resolve(
            fqdn(name), record_type, lifetime=timeout, raise_on_no_answer=False
        )
    except dns.resolver.NXDOMAIN:
        return None
    except dns.exception.Timeout:
        raise DnsError(f"the resolver {address} did not answer within {timeout:g}s") from None
    except dns.exception.DNSException as exc:
        raise DnsError(f"the resolver {address} failed for {name}: {exc}") from None
    if answer.rrset is None:
        return None
    return [plain(item.to_text()) for item in answer.rrset]


def upsert_records(client: Any, zone_id: str, records: list[dict[str, Any]], comment: str) -> str:
    """One change batch that UPSERTs every record (name, type, ttl, values); returns the
    change's id (Route53 applies a batch all or nothing)."""
    from botocore.exceptions import BotoCoreError, ClientError

    changes = [
        {
            "Action": "UPSERT",
            "ResourceRecordSet": {
                "Name": fqdn(record["name"]),
                "Type": record["type"],
                "TTL": int(record["ttl"]),
                "ResourceRecords": [{"Value": value} for value in record["values"]],
            },
        }
        for record in records
    ]
    try:
        answer = client.change_resource_record_sets(
            HostedZoneId=zone_id, ChangeBatch={"Comment": comment[:256], "Changes": changes}
        )
    except (ClientError, BotoCoreError) as exc:
        raise DnsError(f"Route53 refused the change: {_message(exc)}") from None
    return str(answer["ChangeInfo"]["Id"]).removeprefix("/change/")


def change_status(client: Any, change_id: str) -> str:
    """PENDING or INSYNC (every Route53 server serves the change)."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        return str(client.get_change(Id=change_id)["ChangeInfo"]["Status"])
    except (ClientError, BotoCoreError) as exc:
        raise DnsError(f"Route53 does not answer for change {change_id}: {_message(exc)}") from None
