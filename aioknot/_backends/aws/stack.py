"""CloudFormation stacks: ensure one exists as rendered (reuse, update or create) and delete it.

`ensure_stack` costs one DescribeStacks call when the stack is already as rendered: its
parameters, tags and template fingerprint (kept in the stack's Description, which
DescribeStacks returns) all match. Otherwise it creates, updates, or deletes and recreates a
stack that a failed creation left in ROLLBACK_COMPLETE, and waits, streaming the stack's
events to a progress callback and the ``aioknot`` logger. A stack that fails raises
`StackError` listing each failed resource and its reason, as CloudFormation reported them.

Waiting polls DescribeStackEvents (one request per poll, new events only) at intervals that
grow while the stack works (`aioknot._retry.backoff_delays`, unjittered: a poll, not a retry);
the operation itself goes on in CloudFormation if the waiting task is cancelled, and the next
`ensure_stack` waits for it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import anyio
from botocore.exceptions import ClientError

from ..._errors import aws_errors, error_code, error_message
from ..._exceptions import ConfigurationError, StackError
from ..._retry import backoff_delays

if TYPE_CHECKING:  # the published stubs (types-aiobotocore): no import at run time
    from types_aiobotocore_cloudformation.client import CloudFormationClient
    from types_aiobotocore_cloudformation.literals import CapabilityType
    from types_aiobotocore_cloudformation.type_defs import (
        ParameterTypeDef,
        StackEventTypeDef,
        StackTypeDef,
        TagTypeDef,
    )
    from types_aiobotocore_ec2.client import EC2Client

__all__ = [
    "DEFAULT_TIMEOUT",
    "Progress",
    "default_vpc_subnets",
    "delete_stack",
    "describe_stack",
    "ensure_stack",
    "failures_from_events",
    "stack_is_current",
    "template_body",
]

Progress = Callable[[str], None]
logger = logging.getLogger("aioknot")

DEFAULT_TIMEOUT = 3600.0  # seconds; CloudFormation gives up on a stuck resource well before
# Backoff between polls, in seconds: quick at first (roles are ready in seconds), then no
# faster than a compute environment needs (minutes).
FIRST_POLL_INTERVAL = 2.0
MAX_POLL_INTERVAL = 15.0
POLL_BACKOFF = 1.5
# An ensure meets another process's operation at most this often before giving up.
MAX_ATTEMPTS = 4

CAPABILITIES: list[CapabilityType] = ["CAPABILITY_IAM"]
FINGERPRINT_OUTPUT = "AioknotTemplate"
REUSABLE = frozenset(
    {"CREATE_COMPLETE", "UPDATE_COMPLETE", "UPDATE_ROLLBACK_COMPLETE", "IMPORT_COMPLETE"}
)
# States a stack only leaves by being deleted; it holds nothing worth keeping.
RECREATE = frozenset(
    {"ROLLBACK_COMPLETE", "ROLLBACK_FAILED", "CREATE_FAILED", "DELETE_FAILED", "REVIEW_IN_PROGRESS"}
)
STACK_TYPE = "AWS::CloudFormation::Stack"
# Resources CloudFormation stopped because another one failed: not a cause.
CANCELLED_REASONS = ("Resource creation cancelled", "Resource update cancelled")


# --- pure helpers ---------------------------------------------------------------------------


def template_body(template: Mapping[str, Any]) -> str:
    """The JSON body to send, with an output holding a fingerprint of the template.

    DescribeStacks returns outputs but not the template, so the fingerprint is how one call
    can tell that a stack was made from this very template. (Not the Description: moto keeps
    a stack's first Description through updates.)
    """
    outputs = {k: v for k, v in template.get("Outputs", {}).items() if k != FINGERPRINT_OUTPUT}
    bare = {**template, "Outputs": outputs}
    digest = hashlib.sha256(json.dumps(bare, sort_keys=True).encode()).hexdigest()[:16]
    fingerprint = {"Value": digest, "Description": "Fingerprint of the template (aioknot)"}
    return json.dumps({**bare, "Outputs": {**outputs, FINGERPRINT_OUTPUT: fingerprint}})


def stack_is_current(
    stack: StackTypeDef, body: str, parameters: Mapping[str, str], tags: Mapping[str, str]
) -> bool:
    """Whether a DescribeStacks entry is a usable stack made from ``body`` with these values."""
    current_parameters = {
        item["ParameterKey"]: str(item.get("ParameterValue", ""))
        for item in stack.get("Parameters", [])
    }
    current_tags = {item["Key"]: item["Value"] for item in stack.get("Tags", [])}
    fingerprint = json.loads(body)["Outputs"][FINGERPRINT_OUTPUT]["Value"]
    return (
        stack.get("StackStatus") in REUSABLE
        and _outputs(stack).get(FINGERPRINT_OUTPUT) == fingerprint
        and current_parameters == {key: str(value) for key, value in parameters.items()}
        and current_tags == dict(tags)
    )


def failures_from_events(
    events: Sequence[StackEventTypeDef], stack_name: str
) -> list[tuple[str, str, str]]:
    """``(logical id, type, reason)`` of each resource that failed, first failure first.

    ``events`` are in the order they happened. When no resource failed (a template error),
    the stack's own failure reason stands in.
    """
    failures: dict[str, tuple[str, str, str]] = {}
    stack_reasons: list[tuple[str, str, str]] = []
    for event in events:
        status = str(event.get("ResourceStatus", ""))
        reason = str(event.get("ResourceStatusReason") or "")
        logical_id = str(event.get("LogicalResourceId", ""))
        resource_type = str(event.get("ResourceType", ""))
        if _is_stack_event(event, stack_name):
            if reason and ("FAILED" in status or "ROLLBACK" in status):
                stack_reasons.append((logical_id, resource_type, reason))
            continue
        if status.endswith("_FAILED") and not reason.startswith(CANCELLED_REASONS):
            failures.setdefault(logical_id, (logical_id, resource_type, reason or status))
    return list(failures.values()) or stack_reasons[:1]


def describe_event(event: StackEventTypeDef) -> str:
    """One line for the progress callback: ``stack: Resource (Type) STATUS: reason``."""
    line = (
        f"{event.get('StackName', '?')}: {event.get('LogicalResourceId', '?')} "
        f"({event.get('ResourceType', '?')}) {event.get('ResourceStatus', '?')}"
    )
    reason = event.get("ResourceStatusReason")
    return f"{line}: {reason}" if reason else line


def _is_stack_event(event: StackEventTypeDef, stack_name: str) -> bool:
    return event.get("ResourceType") == STACK_TYPE and event.get("LogicalResourceId") == stack_name


def _settled(status: str) -> bool:
    return not status.endswith("_IN_PROGRESS")


def _parameter_list(parameters: Mapping[str, str]) -> list[ParameterTypeDef]:
    return [
        {"ParameterKey": key, "ParameterValue": str(value)} for key, value in parameters.items()
    ]


def _tag_list(tags: Mapping[str, str]) -> list[TagTypeDef]:
    return [{"Key": key, "Value": value} for key, value in tags.items()]


def _outputs(stack: StackTypeDef) -> dict[str, str]:
    return {item["OutputKey"]: str(item["OutputValue"]) for item in stack.get("Outputs") or []}


def stack_outputs(stack: StackTypeDef) -> dict[str, str]:
    """A stack's outputs, by key, without aioknot's own fingerprint."""
    outputs = _outputs(stack)
    outputs.pop(FINGERPRINT_OUTPUT, None)
    return outputs


def _report(progress: Progress | None, message: str) -> None:
    logger.info("%s", message)
    if progress is not None:
        progress(message)


# --- errors -------------------------------------------------------------------------------


def _aws_errors(doing: str) -> contextlib.AbstractContextManager[None]:
    """The one boundary where botocore's errors become ours: StackError by default."""
    return aws_errors(doing, StackError)


def _is_missing(error: ClientError) -> bool:
    return error_code(error) == "ValidationError" and "does not exist" in error_message(error)


# --- AWS calls ------------------------------------------------------------------------------


async def describe_stack(cloudformation: CloudFormationClient, stack: str) -> StackTypeDef | None:
    """Stack ``stack`` (a name or an id) as DescribeStacks says, or None if there is none."""
    with _aws_errors(f"describing stack {stack}"):
        try:
            response = await cloudformation.describe_stacks(StackName=stack)
        except ClientError as error:
            if _is_missing(error):
                return None
            raise
    stacks = response.get("Stacks", [])
    return stacks[0] if stacks else None


class _EventCursor:
    """Reads a stack's events that it has not seen yet, oldest first."""

    def __init__(self, stack_id: str, name: str) -> None:
        self.stack_id = stack_id
        self.name = name
        self.seen: set[str] = set()
        self.events: list[StackEventTypeDef] = []

    async def skip_past(self, cloudformation: CloudFormationClient) -> str | None:
        """Mark what happened before now as seen (one page: they come newest first).

        Returns the stack's latest status among them, if there is one.
        """
        with _aws_errors(f"reading the events of stack {self.name}"):
            response = await cloudformation.describe_stack_events(StackName=self.stack_id)
        page = response.get("StackEvents", [])
        self.seen.update(event["EventId"] for event in page)
        statuses = [
            str(event.get("ResourceStatus")) for event in page if _is_stack_event(event, self.name)
        ]
        return statuses[0] if statuses else None

    async def read(self, cloudformation: CloudFormationClient) -> list[StackEventTypeDef]:
        new: list[StackEventTypeDef] = []
        token: str | None = None
        with _aws_errors(f"reading the events of stack {self.name}"):
            while True:
                kwargs = {"StackName": self.stack_id, **({"NextToken": token} if token else {})}
                response = await cloudformation.describe_stack_events(**kwargs)
                page = response.get("StackEvents", [])
                fresh = [event for event in page if event["EventId"] not in self.seen]
                new.extend(fresh)
                token = response.get("NextToken")
                if not token or len(fresh) < len(page):
                    break
        new.reverse()
        self.seen.update(event["EventId"] for event in new)
        self.events.extend(new)
        return new


async def _wait(
    cloudformation: CloudFormationClient,
    cursor: _EventCursor,
    name: str,
    progress: Progress | None,
    deadline: float,
) -> StackTypeDef | None:
    """Report events until the stack settles; return its final description."""
    intervals = backoff_delays(FIRST_POLL_INTERVAL, MAX_POLL_INTERVAL, POLL_BACKOFF, jitter=False)
    while True:
        settled = False
        for event in await cursor.read(cloudformation):
            _report(progress, describe_event(event))
            status = str(event.get("ResourceStatus", ""))
            settled = settled or (_is_stack_event(event, name) and _settled(status))
        if settled:
            return await describe_stack(cloudformation, cursor.stack_id)
        interval = next(intervals)
        if anyio.current_time() + interval > deadline:
            raise StackError(
                f"stack {name} did not settle in time; CloudFormation goes on with it, and the "
                "next attempt waits for it"
            )
        await anyio.sleep(interval)


def _check_outcome(
    stack: StackTypeDef | None, cursor: _EventCursor, name: str, expected: str, doing: str
) -> None:
    status = stack.get("StackStatus", "") if stack else "DELETE_COMPLETE"
    if status != expected:
        raise StackError(
            f"{doing} stack {name} failed: it is {status}",
            failures_from_events(cursor.events, name),
        )


async def _delete(
    cloudformation: CloudFormationClient,
    stack: StackTypeDef,
    progress: Progress | None,
    deadline: float,
) -> None:
    name, stack_id = stack["StackName"], stack["StackId"]
    cursor = _EventCursor(stack_id, name)
    await cursor.skip_past(cloudformation)
    _report(progress, f"deleting stack {name} (it was {stack.get('StackStatus')})")
    with _aws_errors(f"deleting stack {name}"):
        await cloudformation.delete_stack(StackName=stack_id)
    final = await _wait(cloudformation, cursor, name, progress, deadline)
    _check_outcome(final, cursor, name, "DELETE_COMPLETE", "deleting")
    _report(progress, f"stack {name} is deleted")


async def _create(
    cloudformation: CloudFormationClient,
    name: str,
    body: str,
    parameters: Mapping[str, str],
    tags: Mapping[str, str],
    progress: Progress | None,
    deadline: float,
) -> StackTypeDef | None:
    """Create the stack and wait; None when another process created it meanwhile."""
    _report(progress, f"creating stack {name}")
    with _aws_errors(f"creating stack {name}"):
        try:
            response = await cloudformation.create_stack(
                StackName=name,
                TemplateBody=body,
                Parameters=_parameter_list(parameters),
                Capabilities=CAPABILITIES,
                Tags=_tag_list(tags),
                OnFailure="ROLLBACK",
            )
        except ClientError as error:
            if error_code(error) == "AlreadyExistsException":
                return None
            raise
    cursor = _EventCursor(response["StackId"], name)
    final = await _wait(cloudformation, cursor, name, progress, deadline)
    _check_outcome(final, cursor, name, "CREATE_COMPLETE", "creating")
    return final


async def _update(
    cloudformation: CloudFormationClient,
    stack: StackTypeDef,
    body: str,
    parameters: Mapping[str, str],
    tags: Mapping[str, str],
    progress: Progress | None,
    deadline: float,
) -> StackTypeDef | None:
    """Update the stack and wait; None when it is busy with another process's operation."""
    name, stack_id = stack["StackName"], stack["StackId"]
    cursor = _EventCursor(stack_id, name)
    await cursor.skip_past(cloudformation)
    _report(progress, f"updating stack {name}")
    with _aws_errors(f"updating stack {name}"):
        try:
            await cloudformation.update_stack(
                StackName=stack_id,
                TemplateBody=body,
                Parameters=_parameter_list(parameters),
                Capabilities=CAPABILITIES,
                Tags=_tag_list(tags),
            )
        except ClientError as error:
            message = error_message(error)
            if "No updates are to be performed" in message:
                return stack
            if "can not be updated" in message:
                return None
            raise
    final = await _wait(cloudformation, cursor, name, progress, deadline)
    _check_outcome(final, cursor, name, "UPDATE_COMPLETE", "updating")
    return final


# --- the public face ------------------------------------------------------------------------


async def ensure_stack(
    cloudformation: CloudFormationClient,
    *,
    name: str,
    template: Mapping[str, Any],
    parameters: Mapping[str, str],
    tags: Mapping[str, str],
    progress: Progress | None = None,
    # A deadline checked between polls, not a cancel scope: the error it gives says that
    # CloudFormation goes on, and no request is cut in half.
    timeout: float = DEFAULT_TIMEOUT,  # noqa: ASYNC109
) -> dict[str, str]:
    """Make stack ``name`` run ``template`` with ``parameters`` and ``tags``; return its outputs.

    ``cloudformation`` is an open aioboto3 CloudFormation client. Raises `StackError` when
    the stack fails (with each failed resource and its reason) or does not settle within
    ``timeout`` seconds, and `ConfigurationError` when AWS refuses the credentials.
    """
    body = template_body(template)
    deadline = anyio.current_time() + timeout
    for _ in range(MAX_ATTEMPTS):
        stack = await describe_stack(cloudformation, name)
        if stack is None:
            final = await _create(cloudformation, name, body, parameters, tags, progress, deadline)
        elif stack_is_current(stack, body, parameters, tags):
            return stack_outputs(stack)
        elif stack["StackStatus"] in RECREATE:
            await _delete(cloudformation, stack, progress, deadline)
            continue
        elif stack["StackStatus"].endswith("_IN_PROGRESS"):
            await _wait_for_other(cloudformation, stack, progress, deadline)
            continue
        elif stack["StackStatus"] in REUSABLE:
            final = await _update(cloudformation, stack, body, parameters, tags, progress, deadline)
        else:
            raise StackError(
                f"stack {name} is {stack['StackStatus']}, which aioknot cannot repair: fix or "
                "delete it in the CloudFormation console, then try again"
            )
        if final is not None:
            return stack_outputs(final)
    raise StackError(f"stack {name} kept changing under another process; try again")


async def _wait_for_other(
    cloudformation: CloudFormationClient,
    stack: StackTypeDef,
    progress: Progress | None,
    deadline: float,
) -> None:
    """Another process is creating, updating or deleting the stack: wait for it to finish."""
    name = stack["StackName"]
    _report(progress, f"waiting for stack {name}: it is {stack['StackStatus']}")
    cursor = _EventCursor(stack["StackId"], name)
    latest = await cursor.skip_past(cloudformation)
    # It may have finished between DescribeStacks and now; its last event says so.
    if latest is None or not _settled(latest):
        await _wait(cloudformation, cursor, name, progress, deadline)


async def delete_stack(
    cloudformation: CloudFormationClient,
    *,
    name: str,
    progress: Progress | None = None,
    timeout: float = DEFAULT_TIMEOUT,  # noqa: ASYNC109 (a deadline between polls, as above)
) -> bool:
    """Delete stack ``name`` and wait until it is gone; False when there was none.

    Each resource CloudFormation deletes (or waits on) is reported to ``progress``. Raises
    `StackError` with the resources that could not be deleted.
    """
    deadline = anyio.current_time() + timeout
    stack = await describe_stack(cloudformation, name)
    if stack is None:
        return False
    if (
        stack["StackStatus"].endswith("_IN_PROGRESS")
        and stack["StackStatus"] != "REVIEW_IN_PROGRESS"
    ):
        await _wait_for_other(cloudformation, stack, progress, deadline)
        stack = await describe_stack(cloudformation, stack["StackId"])
        if stack is None or stack["StackStatus"] == "DELETE_COMPLETE":
            return True
    await _delete(cloudformation, stack, progress, deadline)
    return True


async def default_vpc_subnets(ec2: EC2Client) -> tuple[str, list[str]]:
    """The default VPC's id and its default subnets (the environment stack's parameters)."""
    with _aws_errors("looking up the default VPC"):
        vpcs = await ec2.describe_vpcs(Filters=[{"Name": "is-default", "Values": ["true"]}])
        if not vpcs.get("Vpcs"):
            raise ConfigurationError(
                "this account and region have no default VPC: pass use_default_vpc=False to "
                "let aioknot create one"
            )
        vpc_id = str(vpcs["Vpcs"][0]["VpcId"])
        subnets = await ec2.describe_subnets(
            Filters=[
                {"Name": "vpc-id", "Values": [vpc_id]},
                {"Name": "default-for-az", "Values": ["true"]},
            ]
        )
    subnet_ids = sorted(str(subnet["SubnetId"]) for subnet in subnets.get("Subnets", []))
    if not subnet_ids:
        raise ConfigurationError(
            f"the default VPC {vpc_id} has no default subnets: pass use_default_vpc=False"
        )
    return vpc_id, subnet_ids
