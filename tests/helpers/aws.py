"""What the AWS tests share: the account moto answers as, boto3 clients on a moto server, and
a counter of every call aioknot makes. (A fake Batch target for `AwsRun` is in fake_batch.py.)

The fixtures built on these (``boto``, ``calls``, ``simple_batch``, ``fast_polls``) are in
tests/conftest.py.
"""

from __future__ import annotations

from collections import Counter
from types import TracebackType
from typing import Any

import aioboto3
import boto3
import pytest
from botocore.config import Config
from infra.moto import FAKE_CREDENTIALS

REGION = FAKE_CREDENTIALS["AWS_DEFAULT_REGION"]
ACCOUNT = "123456789012"  # moto's account
ECR_HOST = f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com"
# A prebuilt image: a knot given one needs no Docker engine (moto never pulls it in simple mode).
IMAGE = f"{ECR_HOST}/aioknot:prebuilt"
BUCKET = f"aioknot-{ACCOUNT}-{REGION}"  # the default bucket of a knot on this account
# A manifest moto's ECR stores as an image (its registry protocol is not implemented; the
# control plane is, and that is all a prebuilt image or clobber uses).
ECR_MANIFEST = (
    '{"schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json",'
    ' "config": {"digest": "sha256:' + "0" * 64 + '", "size": 1, "mediaType": '
    '"application/vnd.docker.container.image.v1+json"}, "layers": []}'
)
# Calls that would create or change something.
WRITES = ("Create", "Register", "Put", "Update", "Submit", "Tag")


def point_at(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """This process's AWS settings for the test: moto's fake credentials, no profile, and every
    call to ``url`` (a moto server, or a fault proxy in front of one)."""
    for key, value in FAKE_CREDENTIALS.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("AWS_ENDPOINT_URL", url)
    monkeypatch.delenv("AWS_PROFILE", raising=False)


class MotoClients:
    """boto3 clients on one moto server (or a proxy in front of it), one per service, made
    when first asked for and all closed by `close` (an unclosed client leaks sockets, which
    warn at some later garbage collection, in whichever test happens to run then).

    The fake credentials and region are passed explicitly, so that it works whether or not
    the test's environment points at moto.
    """

    def __init__(self, url: str, *, config: Config | None = None) -> None:
        self.url = url
        self._config = config
        self._open: dict[str, Any] = {}

    def __call__(self, service: str) -> Any:
        if service not in self._open:
            self._open[service] = boto3.client(
                service,
                endpoint_url=self.url,
                region_name=REGION,
                aws_access_key_id=FAKE_CREDENTIALS["AWS_ACCESS_KEY_ID"],
                aws_secret_access_key=FAKE_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
                aws_session_token=FAKE_CREDENTIALS["AWS_SESSION_TOKEN"],
                config=self._config,
            )
        return self._open[service]

    def close(self) -> None:
        while self._open:
            self._open.popitem()[1].close()

    def __enter__(self) -> MotoClients:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


async def make_bucket(endpoint: str, bucket: str) -> None:
    """Create ``bucket`` on the S3 at ``endpoint`` (moto, or the fault proxy in front of it)."""
    async with aioboto3.Session().client(
        "s3",
        endpoint_url=endpoint,
        region_name=REGION,
        aws_access_key_id=FAKE_CREDENTIALS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=FAKE_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        aws_session_token=FAKE_CREDENTIALS["AWS_SESSION_TOKEN"],
    ) as s3:
        await s3.create_bucket(Bucket=bucket)


class Calls:
    """Every AWS API call made through any aioboto3 session opened while it counts, as
    (service, operation), and the parameters of every Batch SubmitJob (`calls` fixture)."""

    def __init__(self) -> None:
        self.made: list[tuple[str, str]] = []
        self.submits: list[dict[str, Any]] = []

    def record(self, model: Any, **_: Any) -> None:
        self.made.append((model.service_model.service_name, model.name))

    def submitted(self, params: dict[str, Any], **_: Any) -> None:
        self.submits.append(dict(params))

    def count(self, service: str | None = None, operation: str | None = None) -> int:
        return sum(
            1
            for s, o in self.made
            if (service is None or s == service) and (operation is None or o == operation)
        )

    def of(self, service: str) -> Counter[str]:
        return Counter(o for s, o in self.made if s == service)

    def writes(self) -> list[tuple[str, str]]:
        """The calls that would create or change something."""
        return [(s, o) for s, o in self.made if o.startswith(WRITES)]

    def clear(self) -> None:
        self.made.clear()
        self.submits.clear()
