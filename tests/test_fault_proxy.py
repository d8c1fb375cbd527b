"""The fault proxy itself: each fault reaches botocore as AWS would send it, and counts add up."""

from __future__ import annotations

import time

import pytest
from botocore.config import Config
from botocore.exceptions import ClientError, ConnectionClosedError
from helpers.aws import MotoClients
from infra.fault_proxy import Fault, FaultProxy
from infra.moto import MotoServer

from aioknot._retry import is_transient

ONE_TRY = Config(retries={"max_attempts": 1, "mode": "standard"})


@pytest.mark.parametrize(
    ("kind", "s3_code", "batch_code"),
    [
        ("throttle", "SlowDown", "TooManyRequestsException"),
        ("500", "InternalError", "ServerException"),
        ("503", "ServiceUnavailable", "ServiceUnavailable"),
    ],
)
def test_faults_arrive_as_aws_errors_and_count_as_transient(
    aws: MotoServer, fault_proxy: FaultProxy, kind: str, s3_code: str, batch_code: str
) -> None:
    with MotoClients(fault_proxy.url, config=ONE_TRY) as boto:
        s3, batch = boto("s3"), boto("batch")
        s3.create_bucket(Bucket="proxy-test")
        s3.put_object(Bucket="proxy-test", Key="run/results/1", Body=b"value")
        fault_proxy.add(Fault(kind=kind, service="s3", operation="GET", key_contains="/results/"))
        fault_proxy.add(Fault(kind=kind, service="batch", operation="describejobs"))
        with pytest.raises(ClientError) as s3_error:
            s3.get_object(Bucket="proxy-test", Key="run/results/1")
        with pytest.raises(ClientError) as batch_error:
            batch.describe_jobs(jobs=["job"])
        assert s3_error.value.response["Error"]["Code"] == s3_code
        assert batch_error.value.response["Error"]["Code"] == batch_code
        assert is_transient(s3_error.value) and is_transient(batch_error.value)
        # Other operations and keys pass untouched.
        assert s3.head_object(Bucket="proxy-test", Key="run/results/1")["ContentLength"] == 5
        # ONE_TRY still allows botocore's one retry: two requests, two faults, per call.
        assert fault_proxy.faults[("s3", "GET", kind)] == 2
        assert fault_proxy.faults[("batch", "describejobs", kind)] == 2
        assert fault_proxy.counts[("s3", "HEAD")] == 1


def test_reset_403_delay_and_spent_rules(aws: MotoServer, fault_proxy: FaultProxy) -> None:
    with MotoClients(fault_proxy.url, config=ONE_TRY) as boto:
        s3 = boto("s3")
        s3.create_bucket(Bucket="proxy-test")
        s3.put_object(Bucket="proxy-test", Key="k", Body=b"v")
        reset = fault_proxy.add(Fault(kind="reset", service="s3", operation="GET"))
        with pytest.raises(ConnectionClosedError) as dropped:
            s3.get_object(Bucket="proxy-test", Key="k")
        assert is_transient(dropped.value)
        fault_proxy.remove(reset)
        fault_proxy.add(Fault(kind="403", service="s3", operation="PUT", times=1))
        with pytest.raises(ClientError) as denied:
            s3.put_object(Bucket="proxy-test", Key="k", Body=b"w")
        assert denied.value.response["Error"]["Code"] == "AccessDenied"
        assert not is_transient(denied.value)
        s3.put_object(Bucket="proxy-test", Key="k", Body=b"w")  # the rule was spent
        fault_proxy.add(Fault(kind="delay", seconds=0.3, service="s3", operation="HEAD"))
        started = time.monotonic()
        s3.head_object(Bucket="proxy-test", Key="k")
        assert time.monotonic() - started >= 0.3
        assert s3.get_object(Bucket="proxy-test", Key="k")["Body"].read() == b"w"
