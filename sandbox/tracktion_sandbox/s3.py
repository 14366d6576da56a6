"""The sandbox's stand-in for AWS S3: moto's standalone server on a loopback port.

moto keeps everything in memory, so the buckets the sandbox plan names are (re)created
after every start. This is a real HTTP S3 endpoint: boto3 and the amazon provider's
S3Hook talk to it exactly as to AWS (signatures, multipart uploads, server-side copies).
The same server answers the other AWS APIs the sandbox uses (CloudFormation, Route53,
Secrets Manager); the sandbox's hosted zone is (re)created here too.
"""

from __future__ import annotations

import logging
import socket
import time
from typing import Any

from tracktion_sandbox import layout as L

# dr_security_incident's evidence: created with S3 Object Lock (moto implements it), so an
# object version under retention cannot be deleted or overwritten, even by its uploader.
EVIDENCE_BUCKET = "tracktion-dr-sandbox-evidence"

log = logging.getLogger(__name__)

ENDPOINT_URL = f"http://{L.HOST}:{L.S3_PORT}"


def client(region: str = L.S3_REGION, service: str = "s3") -> Any:
    import boto3

    return boto3.client(
        service,
        endpoint_url=ENDPOINT_URL,
        region_name=region,
        aws_access_key_id=L.S3_ACCESS_KEY,
        aws_secret_access_key=L.S3_SECRET_KEY,
    )


def _wait_for_port(timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.settimeout(0.5)
            if sock.connect_ex((L.HOST, L.S3_PORT)) == 0:
                return
        time.sleep(0.2)
    raise SystemExit(f"moto S3 server not listening on {L.HOST}:{L.S3_PORT} after {timeout:.0f}s")


# The offsite copies are write once: Object Lock in COMPLIANCE mode with a default
# retention, so nobody - a compromised host included - deletes or rewrites a backup
# version before it expires (a day here; the production buckets' retention is the plan's).
# The cross-region bucket has Object Lock on but no default retention here: moto refuses a
# server-side CopyObject into a bucket with a default retention unless the request carries
# x-amz-sdk-checksum-algorithm, which botocore sends on uploads but not on CopyObject (real
# S3 has no such rule for copies). Production sets the retention on both buckets.
OFFSITE_LOCK = {
    "ObjectLockEnabled": "Enabled",
    "Rule": {"DefaultRetention": {"Mode": "COMPLIANCE", "Days": 1}},
}


def ensure_buckets() -> list[str]:
    """Create the sandbox's offsite buckets (each in its own region, Object Lock on) when
    missing."""
    _wait_for_port()
    created = []
    for bucket, region in L.S3_BUCKETS.items():
        s3 = client(region)
        existing = {b["Name"] for b in s3.list_buckets().get("Buckets", [])}
        if bucket in existing:
            continue
        kwargs: dict[str, Any] = {"Bucket": bucket, "ObjectLockEnabledForBucket": True}
        if region != "us-east-1":  # S3 refuses a LocationConstraint of us-east-1
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": region}
        s3.create_bucket(**kwargs)
        if region == L.S3_REGION:
            s3.put_object_lock_configuration(Bucket=bucket, ObjectLockConfiguration=OFFSITE_LOCK)
        created.append(bucket)
        log.info("created S3 bucket %s in %s", bucket, region)
    if ensure_evidence_bucket():
        created.append(EVIDENCE_BUCKET)
    return created


def ensure_evidence_bucket() -> bool:
    """Create the object-locked evidence bucket when missing (Object Lock can only be
    switched on when a bucket is created: an existing unlocked bucket is an error)."""
    s3 = client(L.S3_REGION)
    existing = {b["Name"] for b in s3.list_buckets().get("Buckets", [])}
    if EVIDENCE_BUCKET in existing:
        lock = s3.get_object_lock_configuration(Bucket=EVIDENCE_BUCKET)
        if lock["ObjectLockConfiguration"].get("ObjectLockEnabled") != "Enabled":
            raise SystemExit(f"S3 bucket {EVIDENCE_BUCKET} exists without Object Lock")
        return False
    s3.create_bucket(Bucket=EVIDENCE_BUCKET, ObjectLockEnabledForBucket=True)
    log.info("created S3 bucket %s (Object Lock enabled)", EVIDENCE_BUCKET)
    return True


def ensure_hosted_zone() -> str:
    """Create the sandbox's public hosted zone in moto's Route53 when missing (its records
    are the tests' and the DAGs' business); return its id."""
    route53 = client(L.S3_REGION, "route53")
    wanted = L.HOSTED_ZONE + "."
    for zone in route53.list_hosted_zones_by_name(DNSName=wanted)["HostedZones"]:
        if zone["Name"] == wanted:
            return str(zone["Id"])
    zone = route53.create_hosted_zone(
        Name=wanted, CallerReference=f"tracktion-sandbox-{time.time()}"
    )
    log.info("created Route53 hosted zone %s", L.HOSTED_ZONE)
    return str(zone["HostedZone"]["Id"])
