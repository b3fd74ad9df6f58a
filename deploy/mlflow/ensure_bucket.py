"""Create the MLflow artifact bucket on an S3-compatible store (MinIO) if it is missing.

Why: ``mlflow server --artifacts-destination s3://BUCKET/...`` does not create the bucket, and
the first artifact upload then fails with NoSuchBucket. MinIO's own ``mc`` image could do this,
but that would be one more image to pin and mirror; boto3 is already in the dlor-scale image
(MLflow needs it for S3). Runs as an init step before the server (compose command / Kubernetes
initContainer), waits for the store to come up, and is idempotent.

Reads the same env as the MLflow server: MLFLOW_S3_ENDPOINT_URL, AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY (optionally AWS_DEFAULT_REGION).

Usage: python ensure_bucket.py s3://mlflow-artifacts[/prefix] [--timeout 120]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from urllib.parse import urlparse


def bucket_of(uri: str) -> str:
    parsed = urlparse(uri)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise ValueError(f"expected s3://BUCKET[/prefix], got {uri!r}")
    return parsed.netloc


def ensure_bucket(client, bucket: str, timeout: float = 120.0, sleep: float = 2.0) -> str:
    """Return "exists" or "created"; retry connection errors until ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            names = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
            if bucket in names:
                return "exists"
            client.create_bucket(Bucket=bucket)
            return "created"
        except Exception as e:  # botocore EndpointConnectionError, 503 while MinIO starts, ...
            code = getattr(e, "response", {}).get("Error", {}).get("Code", "")
            if code in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                return "exists"
            if code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
                raise  # retrying cannot fix wrong credentials
            if time.monotonic() > deadline:
                raise
            print(f"ensure_bucket: store not ready ({type(e).__name__}: {e}); retrying",
                  file=sys.stderr, flush=True)
            time.sleep(sleep)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("uri")
    ap.add_argument("--timeout", type=float, default=120.0)
    args = ap.parse_args(argv)
    bucket = bucket_of(args.uri)

    import boto3

    client = boto3.client(
        "s3",
        endpoint_url=os.environ.get("MLFLOW_S3_ENDPOINT_URL"),
        region_name=os.environ.get("AWS_DEFAULT_REGION", "us-east-1"),
    )
    state = ensure_bucket(client, bucket, timeout=args.timeout)
    print(f"ensure_bucket: s3://{bucket} {state}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
