"""Stack lifecycle against a moto server, and CloudFormation's failure paths against a fake.

moto's CloudFormation is synchronous and never rolls back: a resource that fails comes back as
an error response to CreateStack. The paths that only real CloudFormation takes (resources
failing while the stack creates, ROLLBACK_COMPLETE, another process's operation in progress)
run against `FakeCloudFormation`, which answers with the shapes CloudFormation documents.
"""

from __future__ import annotations

import ast
import json
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import aioboto3
import pytest
from botocore.exceptions import ClientError
from infra.moto import MotoServer

from aioknot._backends.aws import stack as aws_stack
from aioknot._backends.aws.options import AwsOptions, aws_options
from aioknot._backends.aws.stack import (
    default_vpc_subnets,
    delete_stack,
    ensure_stack,
    failures_from_events,
    stack_is_current,
    template_body,
)
from aioknot._backends.aws.template import (
    environment_parameters,
    environment_tags,
    environment_template,
    knot_parameters,
    knot_stack_name,
    knot_tags,
    knot_template,
)
from aioknot._exceptions import ConfigurationError, StackError

REGION = "us-east-1"


@pytest.fixture(autouse=True)
def fast_polls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(aws_stack, "FIRST_POLL_INTERVAL", 0.01)
    monkeypatch.setattr(aws_stack, "MAX_POLL_INTERVAL", 0.05)


class Calls:
    """Counts the API calls a client makes, through botocore's event hooks."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def __call__(self, model: Any, **_: Any) -> None:
        self.names.append(model.name)


@pytest.fixture
async def clients(aws: MotoServer) -> AsyncIterator[tuple[Any, Any, Calls]]:
    session = aioboto3.Session()
    calls = Calls()
    async with (
        session.client("cloudformation", endpoint_url=aws.url, region_name=REGION) as cfn,
        session.client("ec2", endpoint_url=aws.url, region_name=REGION) as ec2,
    ):
        cfn.meta.events.register("before-call.cloudformation.*", calls)
        yield cfn, ec2, calls


async def ensure_environment(
    cfn: Any, ec2: Any, options: AwsOptions, progress: Callable[[str], None] | None = None
) -> dict[str, str]:
    vpc_id, subnets = await default_vpc_subnets(ec2)
    return await ensure_stack(
        cfn,
        name=options.environment_stack_name,
        template=environment_template(options),
        parameters=environment_parameters(options, vpc_id=vpc_id, subnet_ids=subnets),
        tags=environment_tags(options),
        progress=progress,
    )


async def test_create_reuse_update_and_delete_the_environment(
    clients: tuple[Any, Any, Calls], aws: MotoServer, caplog: pytest.LogCaptureFixture
) -> None:
    cfn, ec2, calls = clients
    options = aws_options(tags={"team": "imaging"})
    lines: list[str] = []
    with caplog.at_level(logging.INFO, logger="aioknot"):
        outputs = await ensure_environment(cfn, ec2, options, lines.append)

    assert outputs["JobQueueArn"].startswith("arn:aws:batch:us-east-1:123456789012:job-queue/")
    assert outputs["ComputeEnvironmentArn"].startswith("arn:aws:batch:")
    assert outputs["ComputeType"] == "EC2"
    assert outputs["SecurityGroupId"].startswith("sg-")
    assert calls.names == ["DescribeStacks", "CreateStack", "DescribeStackEvents", "DescribeStacks"]
    assert lines[0] == "creating stack aioknot-default"
    assert any(line.endswith("(AWS::CloudFormation::Stack) CREATE_COMPLETE") for line in lines)
    assert "creating stack aioknot-default" in caplog.messages

    session = aioboto3.Session()
    async with session.client("batch", endpoint_url=aws.url, region_name=REGION) as batch:
        queues = await batch.describe_job_queues(jobQueues=[outputs["JobQueueArn"]])
        (queue,) = queues["jobQueues"]
        assert (
            queue["computeEnvironmentOrder"][0]["computeEnvironment"]
            == (outputs["ComputeEnvironmentArn"])
        )
        environments = await batch.describe_compute_environments(
            computeEnvironments=[outputs["ComputeEnvironmentArn"]]
        )
        resources = environments["computeEnvironments"][0]["computeResources"]
        assert resources["type"] == "EC2" and resources["maxvCpus"] == 256
        assert resources["securityGroupIds"] == [outputs["SecurityGroupId"]]
    resources = await cfn.describe_stack_resources(StackName="aioknot-default")
    types = {r["LogicalResourceId"]: r["ResourceType"] for r in resources["StackResources"]}
    assert types["JobQueue"] == "AWS::Batch::JobQueue"
    assert types["InstanceProfile"] == "AWS::IAM::InstanceProfile"

    # The same options again: one DescribeStacks and nothing else.
    calls.names.clear()
    lines.clear()
    assert await ensure_environment(cfn, ec2, options, lines.append) == outputs
    assert calls.names == ["DescribeStacks"]
    assert lines == []

    # A changed value is a stack update of that parameter.
    calls.names.clear()
    bigger = aws_options(tags={"team": "imaging"}, max_vcpus=512)
    updated = await ensure_environment(cfn, ec2, bigger, lines.append)
    assert "UpdateStack" in calls.names and "CreateStack" not in calls.names
    assert updated["JobQueueArn"] == outputs["JobQueueArn"]
    (stack,) = (await cfn.describe_stacks(StackName="aioknot-default"))["Stacks"]
    assert stack["StackStatus"] == "UPDATE_COMPLETE"
    assert {p["ParameterKey"]: p["ParameterValue"] for p in stack["Parameters"]}[
        "MaxvCpus"
    ] == "512"
    assert any("UPDATE_COMPLETE" in line for line in lines)

    # Changed tags change the template: an update too, then reuse again.
    calls.names.clear()
    retagged = aws_options(tags={"team": "physics"}, max_vcpus=512)
    await ensure_environment(cfn, ec2, retagged)
    assert "UpdateStack" in calls.names
    calls.names.clear()
    await ensure_environment(cfn, ec2, retagged)
    assert calls.names == ["DescribeStacks"]

    lines.clear()
    assert await delete_stack(cfn, name="aioknot-default", progress=lines.append) is True
    assert lines[0].startswith("deleting stack aioknot-default")
    assert any("DELETE_COMPLETE" in line for line in lines)
    with pytest.raises(ClientError, match="does not exist"):
        await cfn.describe_stacks(StackName="aioknot-default")
    assert await delete_stack(cfn, name="aioknot-default") is False


@pytest.mark.parametrize(
    "variant",
    [
        {"compute_type": "SPOT", "bid_percentage": 50, "volume_size": 64, "desired_vcpus": 2},
        {"compute_type": "FARGATE"},
        {"compute_type": "FARGATE_SPOT"},
    ],
    ids=["spot", "fargate", "fargate-spot"],
)
async def test_other_compute_types(
    clients: tuple[Any, Any, Calls], variant: dict[str, object]
) -> None:
    cfn, ec2, _ = clients
    options = aws_options(**variant)
    outputs = await ensure_environment(cfn, ec2, options)
    assert outputs["ComputeType"] == options.compute_type
    if options.is_fargate:
        assert outputs["JobExecutionRoleArn"].startswith("arn:aws:iam::123456789012:role/")
        assert "InstanceRoleArn" not in outputs
    else:
        assert "JobExecutionRoleArn" not in outputs
    assert await delete_stack(cfn, name=options.environment_stack_name)


async def test_new_vpc(clients: tuple[Any, Any, Calls]) -> None:
    cfn, ec2, _ = clients
    options = aws_options(use_default_vpc=False, environment="isolated")
    outputs = await ensure_stack(
        cfn,
        name=options.environment_stack_name,
        template=environment_template(options),
        parameters=environment_parameters(options),
        tags=environment_tags(options),
    )
    default_vpc, _ = await default_vpc_subnets(ec2)
    assert outputs["VpcId"].startswith("vpc-") and outputs["VpcId"] != default_vpc
    subnets = outputs["SubnetIds"].split(",")
    described = await ec2.describe_subnets(SubnetIds=subnets)
    assert {s["VpcId"] for s in described["Subnets"]} == {outputs["VpcId"]}
    # Not deleted here: moto cannot delete a stack's custom route table (FACTS.md), and
    # every test starts from a reset server.


async def test_knot_stack(clients: tuple[Any, Any, Calls], aws: MotoServer) -> None:
    cfn, _, calls = clients
    options = aws_options(job_role_policies=["arn:aws:iam::aws:policy/AmazonS3ReadOnlyAccess"])
    name = knot_stack_name("pi-calc")
    parameters = knot_parameters(bucket="aioknot-123456789012-us-east-1", prefix="knots/pi-calc/")
    template = knot_template(options, "pi-calc")
    tags = knot_tags(options, "pi-calc")
    outputs = await ensure_stack(
        cfn, name=name, template=template, parameters=parameters, tags=tags
    )
    assert outputs["JobRoleArn"].startswith("arn:aws:iam::123456789012:role/aioknot-knot-pi-calc")

    session = aioboto3.Session()
    async with session.client("iam", endpoint_url=aws.url, region_name=REGION) as iam:
        role = (await iam.get_role(RoleName=outputs["JobRoleName"]))["Role"]
        assert role["AssumeRolePolicyDocument"]["Statement"][0]["Principal"] == {
            "Service": "ecs-tasks.amazonaws.com"
        }
        policy = await iam.get_role_policy(RoleName=outputs["JobRoleName"], PolicyName="knot-data")
        document = policy["PolicyDocument"]
        if isinstance(document, str):
            # moto stores a CloudFormation role's inline policy as a Python repr.
            document = ast.literal_eval(document)
        assert document["Statement"][0]["Resource"] == (
            "arn:aws:s3:::aioknot-123456789012-us-east-1/knots/pi-calc/*"
        )

    calls.names.clear()
    await ensure_stack(cfn, name=name, template=template, parameters=parameters, tags=tags)
    assert calls.names == ["DescribeStacks"]
    assert await delete_stack(cfn, name=name)


async def test_a_resource_moto_refuses_is_a_stack_error(clients: tuple[Any, Any, Calls]) -> None:
    cfn, ec2, _ = clients
    # A well-formed instance type that does not exist: only the compute environment fails.
    options = aws_options(instance_types=["m99.huge"])
    with pytest.raises(StackError, match="Instance type m99.huge does not exist") as caught:
        await ensure_environment(cfn, ec2, options)
    assert str(caught.value) == (
        "creating stack aioknot-default failed: Instance type m99.huge does not exist"
    )


async def test_missing_credentials_are_a_configuration_error(
    aws: MotoServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    for variable in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(variable)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    session = aioboto3.Session()
    async with session.client("cloudformation", endpoint_url=aws.url, region_name=REGION) as cfn:
        with pytest.raises(ConfigurationError, match="no AWS credentials"):
            await delete_stack(cfn, name="aioknot-default")


async def test_no_default_vpc_is_a_configuration_error(clients: tuple[Any, Any, Calls]) -> None:
    _, ec2, _ = clients
    vpc_id, subnets = await default_vpc_subnets(ec2)
    for subnet in subnets:
        await ec2.delete_subnet(SubnetId=subnet)
    with pytest.raises(ConfigurationError, match="no default subnets"):
        await default_vpc_subnets(ec2)
    await ec2.delete_vpc(VpcId=vpc_id)
    with pytest.raises(ConfigurationError, match="use_default_vpc=False"):
        await default_vpc_subnets(ec2)


# --- CloudFormation's own failure paths, against a fake ------------------------------------

STACK = "aioknot-default"
TEMPLATE = {"Description": "test", "Resources": {}}
PARAMETERS = {"MaxvCpus": "8"}
TAGS = {"aioknot:environment": "default"}


def event(number: int, logical: str, type_: str, status: str, reason: str = "") -> dict[str, Any]:
    return {
        "EventId": f"event-{number}",
        "StackName": STACK,
        "LogicalResourceId": logical,
        "ResourceType": type_,
        "ResourceStatus": status,
        **({"ResourceStatusReason": reason} if reason else {}),
    }


def stack_event(number: int, status: str, reason: str = "") -> dict[str, Any]:
    return event(number, STACK, "AWS::CloudFormation::Stack", status, reason)


def client_error(code: str, message: str, operation: str) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": message}}, operation)


def outputs_of(body: str) -> list[dict[str, str]]:
    """What DescribeStacks would answer for a stack made from ``body``."""
    fingerprint = json.loads(body)["Outputs"]["AioknotTemplate"]["Value"]
    return [
        {"OutputKey": "JobQueueArn", "OutputValue": "arn:queue"},
        {"OutputKey": "AioknotTemplate", "OutputValue": fingerprint},
    ]


class FakeCloudFormation:
    """One stack whose operations unfold one event per DescribeStackEvents call."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.stack: dict[str, Any] | None = None
        self.events: list[dict[str, Any]] = []  # oldest first, as they happened
        self.pending: list[tuple[dict[str, Any], str]] = []  # (event, stack status after it)
        self.scripts: dict[str, list[tuple[dict[str, Any], str]]] = {}
        self.counter = 0

    def existing(self, status: str, events: list[dict[str, Any]], **extra: Any) -> None:
        self.stack = {"StackName": STACK, "StackId": "id-1", "StackStatus": status, **extra}
        self.events = list(events)

    async def describe_stacks(self, StackName: str) -> dict[str, Any]:
        self.calls.append("DescribeStacks")
        if self.stack is None or (
            StackName == STACK and self.stack["StackStatus"] == "DELETE_COMPLETE"
        ):
            raise client_error("ValidationError", f"Stack with id {StackName} does not exist", "x")
        return {"Stacks": [dict(self.stack)]}

    async def describe_stack_events(self, StackName: str, **_: Any) -> dict[str, Any]:
        self.calls.append("DescribeStackEvents")
        if self.pending:
            happened, status = self.pending.pop(0)
            self.events.append(happened)
            assert self.stack is not None
            self.stack["StackStatus"] = status
        return {"StackEvents": list(reversed(self.events))}

    def _start(self, operation: str, stack_id: str) -> None:
        self.pending = list(self.scripts[operation])
        first_status = self.pending[0][1]
        if self.stack is None or self.stack["StackId"] != stack_id:
            self.stack = {"StackName": STACK, "StackId": stack_id, "StackStatus": first_status}
            self.events = []

    async def create_stack(self, StackName: str, **kwargs: Any) -> dict[str, Any]:
        self.calls.append("CreateStack")
        self.counter += 1
        self._start("create", f"id-new-{self.counter}")
        assert self.stack is not None
        self.stack.update(
            Parameters=kwargs["Parameters"],
            Tags=kwargs["Tags"],
            Outputs=outputs_of(kwargs["TemplateBody"]),
        )
        return {"StackId": self.stack["StackId"]}

    async def update_stack(self, StackName: str, **_: Any) -> dict[str, Any]:
        self.calls.append("UpdateStack")
        self._start("update", StackName)
        return {"StackId": StackName}

    async def delete_stack(self, StackName: str) -> None:
        self.calls.append("DeleteStack")
        self._start("delete", StackName)


CREATE_OK = [
    (stack_event(101, "CREATE_IN_PROGRESS", "User Initiated"), "CREATE_IN_PROGRESS"),
    (event(102, "JobQueue", "AWS::Batch::JobQueue", "CREATE_COMPLETE"), "CREATE_IN_PROGRESS"),
    (stack_event(103, "CREATE_COMPLETE"), "CREATE_COMPLETE"),
]
DELETE_OK = [
    (stack_event(201, "DELETE_IN_PROGRESS", "User Initiated"), "DELETE_IN_PROGRESS"),
    (event(202, "JobQueue", "AWS::Batch::JobQueue", "DELETE_COMPLETE"), "DELETE_IN_PROGRESS"),
    (stack_event(203, "DELETE_COMPLETE"), "DELETE_COMPLETE"),
]
CE_REASON = 'Resource handler returned message: "Instance type m99.huge is not supported"'
CREATE_FAILS = [
    (stack_event(301, "CREATE_IN_PROGRESS", "User Initiated"), "CREATE_IN_PROGRESS"),
    (event(302, "ServiceRole", "AWS::IAM::Role", "CREATE_COMPLETE"), "CREATE_IN_PROGRESS"),
    (
        event(
            303, "ComputeEnvironment", "AWS::Batch::ComputeEnvironment", "CREATE_FAILED", CE_REASON
        ),
        "CREATE_IN_PROGRESS",
    ),
    (
        event(
            304,
            "SecurityGroup",
            "AWS::EC2::SecurityGroup",
            "CREATE_FAILED",
            "Resource creation cancelled",
        ),
        "CREATE_IN_PROGRESS",
    ),
    (
        stack_event(
            305,
            "ROLLBACK_IN_PROGRESS",
            "The following resource(s) failed to create: [ComputeEnvironment].",
        ),
        "ROLLBACK_IN_PROGRESS",
    ),
    (event(306, "ServiceRole", "AWS::IAM::Role", "DELETE_COMPLETE"), "ROLLBACK_IN_PROGRESS"),
    (stack_event(307, "ROLLBACK_COMPLETE"), "ROLLBACK_COMPLETE"),
]


async def test_failed_creation_lists_each_failed_resource_with_its_reason() -> None:
    fake = FakeCloudFormation()
    fake.scripts["create"] = CREATE_FAILS
    lines: list[str] = []
    with pytest.raises(StackError) as caught:
        await ensure_stack(
            fake,
            name=STACK,
            template=TEMPLATE,
            parameters=PARAMETERS,
            tags=TAGS,
            progress=lines.append,
        )
    assert caught.value.failures == [
        ("ComputeEnvironment", "AWS::Batch::ComputeEnvironment", CE_REASON)
    ]
    message = str(caught.value)
    assert "creating stack aioknot-default failed: it is ROLLBACK_COMPLETE" in message
    assert f"ComputeEnvironment (AWS::Batch::ComputeEnvironment): {CE_REASON}" in message
    # Every event was streamed, in the order it happened.
    stack = "aioknot-default: aioknot-default (AWS::CloudFormation::Stack)"
    assert [line.removeprefix("aioknot-default: ") for line in lines[1:]] == [
        "aioknot-default (AWS::CloudFormation::Stack) CREATE_IN_PROGRESS: User Initiated",
        "ServiceRole (AWS::IAM::Role) CREATE_COMPLETE",
        f"ComputeEnvironment (AWS::Batch::ComputeEnvironment) CREATE_FAILED: {CE_REASON}",
        "SecurityGroup (AWS::EC2::SecurityGroup) CREATE_FAILED: Resource creation cancelled",
        "aioknot-default (AWS::CloudFormation::Stack) ROLLBACK_IN_PROGRESS: "
        "The following resource(s) failed to create: [ComputeEnvironment].",
        "ServiceRole (AWS::IAM::Role) DELETE_COMPLETE",
        "aioknot-default (AWS::CloudFormation::Stack) ROLLBACK_COMPLETE",
    ]
    assert lines[-1] == f"{stack} ROLLBACK_COMPLETE"


async def test_a_stack_in_rollback_complete_is_deleted_and_created_again() -> None:
    fake = FakeCloudFormation()
    fake.existing("ROLLBACK_COMPLETE", [stack_event(1, "ROLLBACK_COMPLETE")])
    fake.scripts["delete"] = DELETE_OK
    fake.scripts["create"] = CREATE_OK
    lines: list[str] = []
    outputs = await ensure_stack(
        fake, name=STACK, template=TEMPLATE, parameters=PARAMETERS, tags=TAGS, progress=lines.append
    )
    assert outputs == {"JobQueueArn": "arn:queue"}
    assert fake.calls[:3] == ["DescribeStacks", "DescribeStackEvents", "DeleteStack"]
    assert fake.calls.count("CreateStack") == 1
    assert "deleting stack aioknot-default (it was ROLLBACK_COMPLETE)" in lines
    assert "stack aioknot-default is deleted" in lines


async def test_an_operation_in_progress_elsewhere_is_waited_for() -> None:
    fake = FakeCloudFormation()
    body = template_body(TEMPLATE)
    fake.existing(
        "UPDATE_IN_PROGRESS",
        [stack_event(1, "CREATE_COMPLETE"), stack_event(2, "UPDATE_IN_PROGRESS", "User Initiated")],
        Parameters=[{"ParameterKey": "MaxvCpus", "ParameterValue": "8"}],
        Tags=[{"Key": k, "Value": v} for k, v in TAGS.items()],
        Outputs=outputs_of(body),
    )
    fake.pending = [
        (event(3, "JobQueue", "AWS::Batch::JobQueue", "UPDATE_COMPLETE"), "UPDATE_IN_PROGRESS"),
        (stack_event(4, "UPDATE_COMPLETE"), "UPDATE_COMPLETE"),
    ]
    lines: list[str] = []
    outputs = await ensure_stack(
        fake, name=STACK, template=TEMPLATE, parameters=PARAMETERS, tags=TAGS, progress=lines.append
    )
    assert outputs == {"JobQueueArn": "arn:queue"}
    assert "UpdateStack" not in fake.calls and "CreateStack" not in fake.calls
    assert lines[0] == "waiting for stack aioknot-default: it is UPDATE_IN_PROGRESS"


async def test_a_failed_update_reports_its_resources() -> None:
    fake = FakeCloudFormation()
    fake.existing("UPDATE_COMPLETE", [stack_event(1, "CREATE_COMPLETE")], Parameters=[])
    fake.scripts["update"] = [
        (stack_event(11, "UPDATE_IN_PROGRESS", "User Initiated"), "UPDATE_IN_PROGRESS"),
        (
            event(
                12, "ComputeEnvironment", "AWS::Batch::ComputeEnvironment", "UPDATE_FAILED", "boom"
            ),
            "UPDATE_IN_PROGRESS",
        ),
        (
            stack_event(
                13, "UPDATE_ROLLBACK_IN_PROGRESS", "The following resource(s) failed to update"
            ),
            "UPDATE_ROLLBACK_IN_PROGRESS",
        ),
        (stack_event(14, "UPDATE_ROLLBACK_COMPLETE"), "UPDATE_ROLLBACK_COMPLETE"),
    ]
    with pytest.raises(StackError) as caught:
        await ensure_stack(fake, name=STACK, template=TEMPLATE, parameters=PARAMETERS, tags=TAGS)
    assert caught.value.failures == [
        ("ComputeEnvironment", "AWS::Batch::ComputeEnvironment", "boom")
    ]
    # Old events (event-1) were skipped, not reported as part of this update.
    assert fake.calls[:3] == ["DescribeStacks", "DescribeStackEvents", "UpdateStack"]


async def test_a_stack_that_does_not_settle_in_time_is_a_stack_error() -> None:
    fake = FakeCloudFormation()
    fake.scripts["create"] = [CREATE_OK[0]]  # and then nothing more happens
    with pytest.raises(StackError, match="did not settle in time"):
        await ensure_stack(
            fake, name=STACK, template=TEMPLATE, parameters=PARAMETERS, tags=TAGS, timeout=0.2
        )


async def test_access_denied_is_a_configuration_error() -> None:
    class Denied(FakeCloudFormation):
        async def describe_stacks(self, StackName: str) -> dict[str, Any]:
            raise client_error("AccessDenied", "not authorized", "DescribeStacks")

    with pytest.raises(ConfigurationError, match="AccessDenied"):
        await ensure_stack(
            Denied(), name=STACK, template=TEMPLATE, parameters=PARAMETERS, tags=TAGS
        )


def test_failures_fall_back_to_the_stacks_own_reason() -> None:
    events = [
        stack_event(1, "CREATE_IN_PROGRESS"),
        stack_event(2, "ROLLBACK_IN_PROGRESS", "Template error"),
    ]
    assert failures_from_events(events, STACK) == [
        (STACK, "AWS::CloudFormation::Stack", "Template error")
    ]


def test_stack_is_current_compares_template_parameters_and_tags() -> None:
    body = template_body(TEMPLATE)
    stack = {
        "StackStatus": "CREATE_COMPLETE",
        "Outputs": outputs_of(body),
        "Parameters": [{"ParameterKey": "MaxvCpus", "ParameterValue": "8"}],
        "Tags": [{"Key": "aioknot:environment", "Value": "default"}],
    }
    assert stack_is_current(stack, body, PARAMETERS, TAGS)
    assert not stack_is_current(stack, body, {"MaxvCpus": "9"}, TAGS)
    assert not stack_is_current(stack, body, PARAMETERS, {})
    assert not stack_is_current(
        stack, template_body({**TEMPLATE, "Resources": {"Q": {}}}), PARAMETERS, TAGS
    )
    assert not stack_is_current(
        {**stack, "StackStatus": "ROLLBACK_COMPLETE"}, body, PARAMETERS, TAGS
    )
    # Rendering twice gives the same body; the fingerprint is not compounded.
    assert template_body(json.loads(body)) == body
