"""The sandbox's frontend (runbook section 6): a versioned live bucket that went through three
releases (v1.2.1, v1.2.2, v1.2.3 now live), a versions bucket with the v1.2.2/ and v1.2.3/
release prefixes, and a CloudFront distribution in front of the live bucket.

The sandbox endpoint ``/site/`` serves the live bucket's current index.html (what CloudFront
would serve after an invalidation), so a frontend rollback is visible.
"""

from __future__ import annotations

from typing import Any

SITE_BUCKET = "rastup-prod-frontend"
VERSIONS_BUCKET = "rastup-prod-frontend-versions"
RELEASES = ("v1.2.1", "v1.2.2", "v1.2.3")
LIVE_RELEASE = "v1.2.3"


def release_files(release: str) -> dict[str, str]:
    """The site as each release shipped it; v1.2.3 added a file the older ones do not have."""
    files = {
        "index.html": f"<!doctype html><title>rastup</title><h1>rastup {release}</h1>"
                      f'<script src="app.js"></script>',
        "app.js": f"console.log('rastup {release}');",
        "styles/site.css": f"/* {release} */ body {{ font-family: sans-serif; }}",
    }
    if release >= "v1.2.3":
        files["new-feature.js"] = "console.log('new feature');"
    return files


def _bucket(s3: Any, name: str, region: str, versioned: bool) -> bool:
    """Create the bucket if missing; True when it was created."""
    existing = {b["Name"] for b in s3.list_buckets().get("Buckets", [])}
    if name in existing:
        return False
    kwargs: dict = {"Bucket": name}
    if region != "us-east-1":
        kwargs["CreateBucketConfiguration"] = {"LocationConstraint": region}
    s3.create_bucket(**kwargs)
    if versioned:
        s3.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})
    return True


def seed_frontend(s3: Any, cloudfront: Any, region: str) -> str:
    """Create the buckets and the distribution if missing; returns the distribution id."""
    if _bucket(s3, SITE_BUCKET, region, versioned=True):
        for release in RELEASES:  # each release overwrote the live site: one version per release
            for key, body in release_files(release).items():
                s3.put_object(Bucket=SITE_BUCKET, Key=key, Body=body.encode(), ContentType=_type(key))
    if _bucket(s3, VERSIONS_BUCKET, region, versioned=False):
        for release in RELEASES[1:]:
            for key, body in release_files(release).items():
                s3.put_object(Bucket=VERSIONS_BUCKET, Key=f"{release}/{key}", Body=body.encode(),
                              ContentType=_type(key))
    return _distribution(cloudfront)


def _type(key: str) -> str:
    return {"html": "text/html", "js": "application/javascript", "css": "text/css"}[key.rsplit(".", 1)[-1]]


def _distribution(cf: Any) -> str:
    for item in (cf.list_distributions().get("DistributionList", {}).get("Items") or []):
        if item.get("Comment") == SITE_BUCKET:
            return item["Id"]
    origin = f"{SITE_BUCKET}.s3.amazonaws.com"
    resp = cf.create_distribution(DistributionConfig={
        "CallerReference": SITE_BUCKET,
        "Comment": SITE_BUCKET,
        "Enabled": True,
        "Origins": {"Quantity": 1, "Items": [{"Id": "s3", "DomainName": origin,
                                              "S3OriginConfig": {"OriginAccessIdentity": ""}}]},
        "DefaultCacheBehavior": {"TargetOriginId": "s3", "ViewerProtocolPolicy": "redirect-to-https",
                                 "MinTTL": 0, "ForwardedValues": {"QueryString": False,
                                                                  "Cookies": {"Forward": "none"}},
                                 "TrustedSigners": {"Enabled": False, "Quantity": 0}},
        "DefaultRootObject": "index.html",
    })
    return resp["Distribution"]["Id"]


def site_index(s3: Any) -> bytes:
    return s3.get_object(Bucket=SITE_BUCKET, Key="index.html")["Body"].read()
