"""The sandbox's stand-in for AWS S3: moto's standalone server on a loopback port.

moto keeps everything in memory, so the buckets the sandbox plan names are (re)created
after every start. This is a real HTTP S3 endpoint: boto3 and the amazon provider's
S3Hook talk to it exactly as to AWS (signatures, multipart uploads, server-side copies).
"""

from __future__ import annotations

import logging
import socket
import time
from typing import Any

from tracktion_sandbox import layout as L

log = logging.getLogger(__name__)

ENDPOINT_URL = f"http://{L.HOST}:{L.S3_PORT}"


def client(region: str = L.S3_REGION) -> Any:
    import boto3

    return boto3.client(
        "s3",
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


def ensure_buckets() -> list[str]:
    """Create the sandbox's offsite buckets (each in its own region) when missing."""
    _wait_for_port()
    created = []
    for bucket, region in L.S3_BUCKETS.items():
        s3 = client(region)
        existing = {b["Name"] for b in s3.list_buckets().get("Buckets", [])}
        if bucket in existing:
            continue
        kwargs: dict[str, Any] = {"Bucket": bucket}
        if region != "us-east-1":  # S3 refuses a LocationConstraint of us-east-1
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": region}
        s3.create_bucket(**kwargs)
        created.append(bucket)
        log.info("created S3 bucket %s in %s", bucket, region)
    return created
