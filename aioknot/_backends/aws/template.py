"""The two CloudFormation templates of ``backend="aws"``, rendered from `AwsOptions`.

- The **environment stack** (``aioknot-<environment>``), shared by every knot of that
  environment: a Batch service role, the instance role and profile (EC2, SPOT) or the job
  execution role (FARGATE, FARGATE_SPOT), a launch template (EC2, SPOT: IMDSv2, and the root
  volume's size when given), a security group without ingress, the VPC (the default one, its
  subnets passed as parameters, or a new one with public subnets and an internet gateway),
  the compute environment and the job queue. The launch template requires IMDSv2 with a hop
  limit of 1, so that a job's container cannot borrow the instance role.
- The **knot stack** (``aioknot-knot-<knot>``): the knot's job role, which may read and write
  (never delete) only the knot's prefix of the bucket, and, when the knot has ``secrets``, an
  execution role that may read exactly those secrets and parameters. It is separate because
  the environment is shared and each knot's roles must see only its own data.

What an option changes in the template's shape (compute type, VPC choice, optional
properties) is rendered; the values themselves are stack parameters, so that a change of
value is a plain stack update. Job definitions are not here: they are registered through the
Batch API per image and resources.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..._exceptions import ConfigurationError
from .options import RESERVED_TAG_PREFIX, AwsOptions

__all__ = [
    "KNOT_STACK_PREFIX",
    "Template",
    "environment_parameters",
    "environment_tags",
    "environment_template",
    "knot_parameters",
    "knot_stack_name",
    "knot_tags",
    "knot_template",
]

Template = dict[str, Any]

FORMAT_VERSION = "2010-09-09"
KNOT_STACK_PREFIX = "aioknot-knot-"
ENVIRONMENT_TAG = f"{RESERVED_TAG_PREFIX}environment"
KNOT_TAG = f"{RESERVED_TAG_PREFIX}knot"
# The address plan of a new VPC: two public /20 subnets in the first two zones.
VPC_CIDR = "10.0.0.0/16"
SUBNET_CIDRS = ("10.0.0.0/20", "10.0.16.0/20")

_PARTITION = {"Ref": "AWS::Partition"}


def knot_stack_name(knot: str) -> str:
    return f"{KNOT_STACK_PREFIX}{knot}"


# --- tags -----------------------------------------------------------------------------------


def environment_tags(options: AwsOptions) -> dict[str, str]:
    """Tags for the environment stack and each of its resources."""
    return {**options.tags, ENVIRONMENT_TAG: options.environment}


def knot_tags(options: AwsOptions, knot: str) -> dict[str, str]:
    """Tags for a knot stack and its resources."""
    return {**options.tags, KNOT_TAG: knot}


def _tag_list(tags: Mapping[str, str]) -> list[dict[str, str]]:
    return [{"Key": key, "Value": value} for key, value in sorted(tags.items())]


def _tag_map(tags: Mapping[str, str]) -> dict[str, str]:
    # Batch resources take tags as a JSON object rather than a list of Key/Value pairs.
    return dict(sorted(tags.items()))


# --- the environment stack --------------------------------------------------------------


def environment_template(options: AwsOptions) -> Template:
    """The environment stack's template; raises `ConfigurationError` for an existing queue."""
    if not options.creates_environment:
        raise ConfigurationError("job_queue names an existing queue: there is no environment stack")
    tags = environment_tags(options)
    resources: dict[str, Any] = {
        "ServiceRole": _service_role(tags),
        "SecurityGroup": _security_group(options, tags),
        "ComputeEnvironment": _compute_environment(options, tags),
        "JobQueue": _job_queue(tags),
    }
    if options.is_fargate:
        resources["JobExecutionRole"] = _execution_role(tags)
    else:
        resources["InstanceRole"] = _instance_role(tags)
        resources["InstanceProfile"] = {
            "Type": "AWS::IAM::InstanceProfile",
            "Properties": {"Roles": [{"Ref": "InstanceRole"}]},
        }
        resources["LaunchTemplate"] = _launch_template(options, tags)
    if not options.use_default_vpc:
        resources.update(_new_vpc(tags))
    return {
        "AWSTemplateFormatVersion": FORMAT_VERSION,
        "Description": f"aioknot environment {options.environment!r}: AWS Batch compute "
        f"environment ({options.compute_type}) and job queue",
        "Parameters": _environment_parameter_declarations(options),
        "Resources": resources,
        "Outputs": _environment_outputs(options),
    }


def environment_parameters(
    options: AwsOptions, *, vpc_id: str | None = None, subnet_ids: Sequence[str] = ()
) -> dict[str, str]:
    """The environment stack's parameter values.

    With ``use_default_vpc`` (the default) pass the default VPC's id and subnets.
    """
    parameters: dict[str, str] = {"MaxvCpus": str(options.max_vcpus)}
    if options.use_default_vpc:
        if not vpc_id or not subnet_ids:
            raise ConfigurationError(
                "use_default_vpc=True needs the default VPC and its subnets; this account and "
                "region have none: pass use_default_vpc=False to create a VPC"
            )
        parameters["VpcId"] = vpc_id
        parameters["SubnetIds"] = ",".join(subnet_ids)
    if not options.is_fargate:
        parameters["MinvCpus"] = str(options.min_vcpus)
        parameters["InstanceTypes"] = ",".join(options.instance_types)
        optional = {
            "DesiredvCpus": options.desired_vcpus,
            "BidPercentage": options.bid_percentage,
            "ImageId": options.image_id,
            "Ec2KeyPair": options.ec2_key_pair,
            "VolumeSize": options.volume_size,
        }
        parameters.update({key: str(value) for key, value in optional.items() if value is not None})
    return parameters


def _environment_parameter_declarations(options: AwsOptions) -> dict[str, Any]:
    declared: dict[str, Any] = {
        "MaxvCpus": {
            "Type": "Number",
            "MinValue": 1,
            "Description": "Most vCPUs the compute environment may run at once",
        },
    }
    if options.use_default_vpc:
        declared["VpcId"] = {"Type": "AWS::EC2::VPC::Id", "Description": "The default VPC"}
        declared["SubnetIds"] = {
            "Type": "String",
            "Description": "Comma-separated subnets of the default VPC",
        }
    if options.is_fargate:
        return declared
    declared["MinvCpus"] = {"Type": "Number", "MinValue": 0, "Description": "vCPUs kept running"}
    declared["InstanceTypes"] = {
        "Type": "String",
        "Description": "Comma-separated instance types or families ('optimal' lets Batch choose)",
    }
    if options.desired_vcpus is not None:
        declared["DesiredvCpus"] = {"Type": "Number", "MinValue": 0}
    if options.bid_percentage is not None:
        declared["BidPercentage"] = {"Type": "Number", "MinValue": 1, "MaxValue": 100}
    if options.image_id is not None:
        declared["ImageId"] = {"Type": "AWS::EC2::Image::Id", "Description": "AMI for instances"}
    if options.ec2_key_pair is not None:
        declared["Ec2KeyPair"] = {"Type": "AWS::EC2::KeyPair::KeyName"}
    if options.volume_size is not None:
        declared["VolumeSize"] = {
            "Type": "Number",
            "MinValue": 1,
            "MaxValue": 16384,
            "Description": "Root volume size of each instance, GiB",
        }
    return declared


def _environment_outputs(options: AwsOptions) -> dict[str, Any]:
    outputs: dict[str, Any] = {
        "JobQueueArn": {"Value": {"Ref": "JobQueue"}},
        "ComputeEnvironmentArn": {"Value": {"Ref": "ComputeEnvironment"}},
        "ServiceRoleArn": {"Value": {"Fn::GetAtt": ["ServiceRole", "Arn"]}},
        "SecurityGroupId": {"Value": {"Fn::GetAtt": ["SecurityGroup", "GroupId"]}},
        "VpcId": {"Value": _vpc_id(options)},
        "SubnetIds": {"Value": _subnet_list(options)},
        "ComputeType": {"Value": options.compute_type},
    }
    if options.is_fargate:
        outputs["JobExecutionRoleArn"] = {"Value": {"Fn::GetAtt": ["JobExecutionRole", "Arn"]}}
    else:
        outputs["InstanceRoleArn"] = {"Value": {"Fn::GetAtt": ["InstanceRole", "Arn"]}}
        outputs["InstanceProfileArn"] = {"Value": {"Fn::GetAtt": ["InstanceProfile", "Arn"]}}
    return outputs


def _vpc_id(options: AwsOptions) -> dict[str, Any]:
    return {"Ref": "VpcId"} if options.use_default_vpc else {"Ref": "Vpc"}


def _subnet_ids(options: AwsOptions) -> Any:
    if options.use_default_vpc:
        return _split("SubnetIds")
    return [{"Ref": f"PublicSubnet{index}"} for index in range(len(SUBNET_CIDRS))]


def _subnet_list(options: AwsOptions) -> dict[str, Any]:
    if options.use_default_vpc:
        return {"Ref": "SubnetIds"}
    return {"Fn::Join": [",", _subnet_ids(options)]}


def _split(parameter: str) -> dict[str, Any]:
    # Lists travel as comma-separated Strings: list-typed parameters come back from moto's
    # DescribeStacks as Python reprs, which would make every ensure look like a change.
    return {"Fn::Split": [",", {"Ref": parameter}]}


def _assume_role_policy(service: str, condition: dict[str, Any] | None = None) -> dict[str, Any]:
    statement: dict[str, Any] = {
        "Effect": "Allow",
        "Principal": {"Service": service},
        "Action": "sts:AssumeRole",
    }
    if condition:
        statement["Condition"] = condition
    return {"Version": "2012-10-17", "Statement": [statement]}


def _managed_policy(name: str) -> dict[str, Any]:
    return {"Fn::Sub": f"arn:${{AWS::Partition}}:iam::aws:policy/{name}"}


def _service_role(tags: Mapping[str, str]) -> dict[str, Any]:
    # Batch's service-linked role would do on AWS, but the resource needs a role to be
    # portable to moto (which requires ServiceRole); the managed policy is Batch's own minimum.
    return {
        "Type": "AWS::IAM::Role",
        "Properties": {
            "AssumeRolePolicyDocument": _assume_role_policy("batch.amazonaws.com"),
            "ManagedPolicyArns": [_managed_policy("service-role/AWSBatchServiceRole")],
            "Tags": _tag_list(tags),
        },
    }


def _instance_role(tags: Mapping[str, str]) -> dict[str, Any]:
    # What the ECS agent on each instance needs (register, pull images, write logs); jobs do
    # not get it: they run with the knot's own job role.
    return {
        "Type": "AWS::IAM::Role",
        "Properties": {
            "AssumeRolePolicyDocument": _assume_role_policy("ec2.amazonaws.com"),
            "ManagedPolicyArns": [
                _managed_policy("service-role/AmazonEC2ContainerServiceforEC2Role")
            ],
            "Tags": _tag_list(tags),
        },
    }


def _execution_role(tags: Mapping[str, str], *, pulls_images: bool = True) -> dict[str, Any]:
    """The role ECS starts a job's container with. On Fargate (no instance role) it pulls the
    image and writes the job's log; on EC2 the instance role does that, so a knot's execution
    role there (``pulls_images=False``) only reads the knot's secrets."""
    properties: dict[str, Any] = {
        "AssumeRolePolicyDocument": _assume_role_policy(
            "ecs-tasks.amazonaws.com", _source_account_condition()
        ),
        "Tags": _tag_list(tags),
    }
    if pulls_images:
        properties["ManagedPolicyArns"] = [
            _managed_policy("service-role/AmazonECSTaskExecutionRolePolicy")
        ]
    return {"Type": "AWS::IAM::Role", "Properties": properties}


def _source_account_condition() -> dict[str, Any]:
    # Only ECS tasks of this account may assume the role (the confused-deputy guard).
    return {"StringEquals": {"aws:SourceAccount": {"Ref": "AWS::AccountId"}}}


def _security_group(options: AwsOptions, tags: Mapping[str, str]) -> dict[str, Any]:
    # No ingress at all: workers only call out (ECR, S3, CloudWatch Logs).
    return {
        "Type": "AWS::EC2::SecurityGroup",
        "Properties": {
            "GroupDescription": "aioknot workers: outbound only",
            "VpcId": _vpc_id(options),
            "Tags": _tag_list(tags),
        },
    }


def _launch_template(options: AwsOptions, tags: Mapping[str, str]) -> dict[str, Any]:
    # IMDSv2 only, one hop: the ECS agent on the host reaches the instance metadata service,
    # but a job's container (one hop further, behind the Docker bridge) cannot borrow the
    # instance role's credentials: jobs get the knot's job role and nothing else.
    data: dict[str, Any] = {
        "MetadataOptions": {
            "HttpEndpoint": "enabled",
            "HttpTokens": "required",
            "HttpPutResponseHopLimit": 1,
        },
    }
    if options.volume_size is not None:
        data["BlockDeviceMappings"] = [
            {
                "DeviceName": "/dev/xvda",
                "Ebs": {
                    "VolumeSize": {"Ref": "VolumeSize"},
                    "VolumeType": "gp3",
                    "Encrypted": True,
                    "DeleteOnTermination": True,
                },
            }
        ]
    return {
        "Type": "AWS::EC2::LaunchTemplate",
        "Properties": {
            "LaunchTemplateData": data,
            "TagSpecifications": [
                {"ResourceType": "launch-template", "Tags": _tag_list(tags)},
            ],
        },
    }


def _compute_environment(options: AwsOptions, tags: Mapping[str, str]) -> dict[str, Any]:
    resources: dict[str, Any] = {
        "Type": options.compute_type,
        "MaxvCpus": {"Ref": "MaxvCpus"},
        "Subnets": _subnet_ids(options),
        "SecurityGroupIds": [{"Fn::GetAtt": ["SecurityGroup", "GroupId"]}],
    }
    if not options.is_fargate:
        resources.update(
            {
                "AllocationStrategy": "SPOT_PRICE_CAPACITY_OPTIMIZED"
                if options.compute_type == "SPOT"
                else "BEST_FIT_PROGRESSIVE",
                "MinvCpus": {"Ref": "MinvCpus"},
                "InstanceTypes": _split("InstanceTypes"),
                "InstanceRole": {"Fn::GetAtt": ["InstanceProfile", "Arn"]},
                # Instances are tagged too, so that they show up as the environment's.
                "Tags": _tag_map(tags),
            }
        )
        optional = {
            "DesiredvCpus": options.desired_vcpus,
            "BidPercentage": options.bid_percentage,
            "ImageId": options.image_id,
            "Ec2KeyPair": options.ec2_key_pair,
        }
        resources.update(
            {key: {"Ref": key} for key, value in optional.items() if value is not None}
        )
        resources["LaunchTemplate"] = {
            "LaunchTemplateId": {"Ref": "LaunchTemplate"},
            "Version": {"Fn::GetAtt": ["LaunchTemplate", "LatestVersionNumber"]},
        }
    return {
        "Type": "AWS::Batch::ComputeEnvironment",
        "Properties": {
            "Type": "MANAGED",
            "State": "ENABLED",
            "ServiceRole": {"Fn::GetAtt": ["ServiceRole", "Arn"]},
            "ComputeResources": resources,
            "Tags": _tag_map(tags),
        },
    }


def _job_queue(tags: Mapping[str, str]) -> dict[str, Any]:
    return {
        "Type": "AWS::Batch::JobQueue",
        "Properties": {
            "Priority": 1,
            "State": "ENABLED",
            "ComputeEnvironmentOrder": [
                {"Order": 1, "ComputeEnvironment": {"Ref": "ComputeEnvironment"}}
            ],
            "Tags": _tag_map(tags),
        },
    }


def _new_vpc(tags: Mapping[str, str]) -> dict[str, Any]:
    resources: dict[str, Any] = {
        "Vpc": {
            "Type": "AWS::EC2::VPC",
            "Properties": {
                "CidrBlock": VPC_CIDR,
                "EnableDnsSupport": True,
                "EnableDnsHostnames": True,
                "Tags": _tag_list(tags),
            },
        },
        "InternetGateway": {
            "Type": "AWS::EC2::InternetGateway",
            "Properties": {"Tags": _tag_list(tags)},
        },
        "GatewayAttachment": {
            "Type": "AWS::EC2::VPCGatewayAttachment",
            "Properties": {
                "VpcId": {"Ref": "Vpc"},
                "InternetGatewayId": {"Ref": "InternetGateway"},
            },
        },
        "RouteTable": {
            "Type": "AWS::EC2::RouteTable",
            "Properties": {"VpcId": {"Ref": "Vpc"}, "Tags": _tag_list(tags)},
        },
        "InternetRoute": {
            "Type": "AWS::EC2::Route",
            # The route needs the gateway attached, which Ref alone does not wait for.
            "DependsOn": "GatewayAttachment",
            "Properties": {
                "RouteTableId": {"Ref": "RouteTable"},
                "DestinationCidrBlock": "0.0.0.0/0",
                "GatewayId": {"Ref": "InternetGateway"},
            },
        },
    }
    for index, cidr in enumerate(SUBNET_CIDRS):
        resources[f"PublicSubnet{index}"] = {
            "Type": "AWS::EC2::Subnet",
            "Properties": {
                "VpcId": {"Ref": "Vpc"},
                "CidrBlock": cidr,
                "AvailabilityZone": {"Fn::Select": [index, {"Fn::GetAZs": ""}]},
                # Public addresses let workers reach ECR and S3 without a NAT gateway.
                "MapPublicIpOnLaunch": True,
                "Tags": _tag_list(tags),
            },
        }
        resources[f"PublicSubnet{index}Routes"] = {
            "Type": "AWS::EC2::SubnetRouteTableAssociation",
            "Properties": {
                "SubnetId": {"Ref": f"PublicSubnet{index}"},
                "RouteTableId": {"Ref": "RouteTable"},
            },
        }
    return resources


# --- the knot stack -------------------------------------------------------------------------


def knot_has_execution_role(options: AwsOptions) -> bool:
    """Whether the knot stack makes the job's execution role: for ``secrets`` (only this
    knot's role may read them), or for Fargate on an existing queue (no environment stack)."""
    return bool(options.secrets) or (options.is_fargate and not options.creates_environment)


def knot_template(options: AwsOptions, knot: str) -> Template:
    """The knot stack's template: the job role, and the execution role when the knot has
    secrets or runs on Fargate in an existing queue (`knot_has_execution_role`)."""
    tags = knot_tags(options, knot)
    resources: dict[str, Any] = {"JobRole": _job_role(options, tags)}
    outputs: dict[str, Any] = {
        "JobRoleArn": {"Value": {"Fn::GetAtt": ["JobRole", "Arn"]}},
        "JobRoleName": {"Value": {"Ref": "JobRole"}},
    }
    if knot_has_execution_role(options):
        resources["JobExecutionRole"] = _knot_execution_role(options, tags)
        outputs["JobExecutionRoleArn"] = {"Value": {"Fn::GetAtt": ["JobExecutionRole", "Arn"]}}
    return {
        "AWSTemplateFormatVersion": FORMAT_VERSION,
        "Description": f"aioknot knot {knot!r}: the job role, limited to the knot's own data",
        "Parameters": {
            "Bucket": {
                "Type": "String",
                "AllowedPattern": "^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$",
                "Description": "The bucket of the knot's store",
            },
            "Prefix": {
                "Type": "String",
                "AllowedPattern": "^[^/*?].*/$",
                "Description": "The knot's prefix in the bucket (ends with /)",
            },
            "Results": {
                "Type": "String",
                "AllowedPattern": "^[^/?].*/results/$",
                "Description": "The results of the knots' runs (a pipeline's inputs, read only)",
            },
        },
        "Resources": resources,
        "Outputs": outputs,
    }


def secret_resources(options: AwsOptions) -> tuple[list[str], list[str]]:
    """The IAM resources of the knot's secrets: (Secrets Manager secrets, SSM parameters).

    Batch accepts a secret ARN followed by ``:json-key:version-stage:version-id``; the policy
    names the secret itself. A secret's full ARN ends with a 6-character suffix; a partial ARN
    (without it) is matched with exactly 6 more characters, never a wider wildcard.
    """
    secrets: set[str] = set()
    parameters: set[str] = set()
    for arn in options.secrets.values():
        if ":secretsmanager:" in arn:
            base = ":".join(arn.split(":")[:7])
            name = base.rpartition(":")[2]
            has_suffix = len(name) > 7 and name[-7] == "-" and name[-6:].isalnum()
            secrets.add(base if has_suffix else f"{base}-??????")
        else:
            parameters.add(arn)
    return sorted(secrets), sorted(parameters)


def _knot_execution_role(options: AwsOptions, tags: Mapping[str, str]) -> dict[str, Any]:
    role = _execution_role(tags, pulls_images=options.is_fargate)
    secrets, parameters = secret_resources(options)
    statements: list[dict[str, Any]] = []
    if secrets:
        statements.append(
            {
                "Sid": "KnotSecrets",
                "Effect": "Allow",
                "Action": "secretsmanager:GetSecretValue",
                "Resource": secrets,
            }
        )
    if parameters:
        statements.append(
            {
                "Sid": "KnotParameters",
                "Effect": "Allow",
                "Action": "ssm:GetParameters",
                "Resource": parameters,
            }
        )
    if statements:
        role["Properties"]["Policies"] = [
            {
                "PolicyName": "knot-secrets",
                "PolicyDocument": {"Version": "2012-10-17", "Statement": statements},
            }
        ]
    return role


def knot_parameters(*, bucket: str, prefix: str) -> dict[str, str]:
    """The knot stack's parameter values: the store's bucket, the knot's key prefix, and the
    results of every knot's runs beside it (``.../knots/*/runs/*/results/``)."""
    if not prefix or prefix.startswith("/") or not prefix.endswith("/") or "*" in prefix:
        # A prefix without its trailing / would also grant the knots whose names extend it.
        raise ConfigurationError(
            f"the knot prefix {prefix!r} must be a non-empty key prefix ending with '/'"
        )
    knots = prefix.rstrip("/").rpartition("/")[0]  # "<root>knots", the knots' common prefix
    results = f"{knots}/*/runs/*/results/" if knots else "*/runs/*/results/"
    return {"Bucket": bucket, "Prefix": prefix, "Results": results}


def _job_role(options: AwsOptions, tags: Mapping[str, str]) -> dict[str, Any]:
    objects = {"Fn::Sub": "arn:${AWS::Partition}:s3:::${Bucket}/${Prefix}*"}
    bucket = {"Fn::Sub": "arn:${AWS::Partition}:s3:::${Bucket}"}
    statements = [
        {
            "Sid": "KnotObjects",
            "Effect": "Allow",
            # No DeleteObject: a worker only reads its inputs and writes whole records; the
            # client deletes (clobber, gc) with the user's own credentials.
            "Action": ["s3:GetObject", "s3:PutObject"],
            "Resource": objects,
        },
        {
            # Listing inside the prefix turns a missing key into 404 rather than 403.
            "Sid": "KnotListing",
            "Effect": "Allow",
            "Action": "s3:ListBucket",
            "Resource": bucket,
            "Condition": {"StringLike": {"s3:prefix": {"Fn::Sub": "${Prefix}*"}}},
        },
        {
            # A pipeline's worker reads the records of the run upstream, which may be another
            # knot's in the same store: read-only, and results only (no inputs, no functions).
            "Sid": "PipelineInputs",
            "Effect": "Allow",
            "Action": "s3:GetObject",
            "Resource": {"Fn::Sub": "arn:${AWS::Partition}:s3:::${Bucket}/${Results}*"},
        },
        {
            "Sid": "PipelineListing",
            "Effect": "Allow",
            "Action": "s3:ListBucket",
            "Resource": bucket,
            "Condition": {"StringLike": {"s3:prefix": {"Fn::Sub": "${Results}*"}}},
        },
    ]
    properties: dict[str, Any] = {
        "AssumeRolePolicyDocument": _assume_role_policy(
            "ecs-tasks.amazonaws.com", _source_account_condition()
        ),
        "Policies": [
            {
                "PolicyName": "knot-data",
                "PolicyDocument": {"Version": "2012-10-17", "Statement": statements},
            }
        ],
        "Tags": _tag_list(tags),
    }
    if options.job_role_policies:
        properties["ManagedPolicyArns"] = list(options.job_role_policies)
    return {"Type": "AWS::IAM::Role", "Properties": properties}
