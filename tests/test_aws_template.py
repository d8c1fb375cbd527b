"""The rendered templates: cfn-lint clean in every variant, least privilege, all tagged."""

from __future__ import annotations

import json
from typing import Any

import pytest
from cfnlint.api import lint

from aioknot._backends.aws.options import AwsOptions, aws_options
from aioknot._backends.aws.template import (
    ENVIRONMENT_TAG,
    KNOT_TAG,
    environment_parameters,
    environment_tags,
    environment_template,
    knot_parameters,
    knot_stack_name,
    knot_template,
)
from aioknot._exceptions import ConfigurationError

VARIANTS: dict[str, dict[str, object]] = {
    "ec2-default-vpc": {},
    "ec2-new-vpc": {"use_default_vpc": False, "instance_types": ["c5.large", "m5"]},
    "spot-every-option": {
        "compute_type": "SPOT",
        "bid_percentage": 60,
        "image_id": "ami-0123456789abcdef0",
        "ec2_key_pair": "my-key",
        "volume_size": 100,
        "desired_vcpus": 4,
        "gpus": 1,
        "instance_types": ["g4dn"],
        "tags": {"team": "imaging"},
    },
    "fargate-default-vpc": {"compute_type": "FARGATE"},
    "fargate-spot-new-vpc": {"compute_type": "FARGATE_SPOT", "use_default_vpc": False},
}
VPC = "vpc-0123456789abcdef0"
SUBNETS = ["subnet-0123456789abcdef0", "subnet-0123456789abcdef1"]
# Types whose CloudFormation resource takes tags (Tags, or TagSpecifications for templates).
TAGGABLE = {
    "AWS::IAM::Role",
    "AWS::EC2::SecurityGroup",
    "AWS::EC2::VPC",
    "AWS::EC2::InternetGateway",
    "AWS::EC2::Subnet",
    "AWS::EC2::RouteTable",
    "AWS::EC2::LaunchTemplate",
    "AWS::Batch::ComputeEnvironment",
    "AWS::Batch::JobQueue",
}


def options_for(variant: str) -> AwsOptions:
    return aws_options(**VARIANTS[variant])


def lint_errors(template: dict[str, Any]) -> list[str]:
    # Warnings and informational findings count too: the templates should be spotless.
    return [str(match) for match in lint(json.dumps(template), regions=["us-east-1"])]


def resources_of(template: dict[str, Any], type_: str) -> dict[str, Any]:
    return {k: v for k, v in template["Resources"].items() if v["Type"] == type_}


@pytest.mark.parametrize("variant", VARIANTS)
def test_environment_template_passes_cfn_lint(variant: str) -> None:
    assert lint_errors(environment_template(options_for(variant))) == []


@pytest.mark.parametrize("variant", VARIANTS)
def test_knot_template_passes_cfn_lint(variant: str) -> None:
    assert lint_errors(knot_template(options_for(variant), "pi-calc")) == []


def test_knot_template_for_an_existing_fargate_queue_passes_cfn_lint() -> None:
    options = aws_options(
        job_queue="arn:aws:batch:us-east-1:123456789012:job-queue/shared",
        compute_type="FARGATE",
        job_role_policies=["arn:aws:iam::aws:policy/AmazonDynamoDBReadOnlyAccess"],
    )
    template = knot_template(options, "pi-calc")
    assert lint_errors(template) == []
    assert "JobExecutionRoleArn" in template["Outputs"]
    with pytest.raises(ConfigurationError, match="no environment stack"):
        environment_template(options)


@pytest.mark.parametrize("variant", VARIANTS)
def test_parameters_given_are_exactly_the_parameters_declared(variant: str) -> None:
    options = options_for(variant)
    parameters = environment_parameters(options, vpc_id=VPC, subnet_ids=SUBNETS)
    assert set(parameters) == set(environment_template(options)["Parameters"])
    assert all(isinstance(value, str) for value in parameters.values())


def test_parameter_values() -> None:
    options = aws_options(compute_type="SPOT", bid_percentage=60, max_vcpus=32, volume_size=50)
    parameters = environment_parameters(options, vpc_id=VPC, subnet_ids=SUBNETS)
    assert parameters == {
        "MaxvCpus": "32",
        "VpcId": VPC,
        "SubnetIds": ",".join(SUBNETS),
        "MinvCpus": "0",
        "InstanceTypes": "optimal",
        "BidPercentage": "60",
        "VolumeSize": "50",
    }


def test_default_vpc_without_subnets_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="use_default_vpc=False"):
        environment_parameters(aws_options(), vpc_id=None, subnet_ids=[])


@pytest.mark.parametrize("variant", VARIANTS)
def test_security_group_has_no_ingress(variant: str) -> None:
    template = environment_template(options_for(variant))
    assert not resources_of(template, "AWS::EC2::SecurityGroupIngress")
    for group in resources_of(template, "AWS::EC2::SecurityGroup").values():
        assert "SecurityGroupIngress" not in group["Properties"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_taggable_resource_is_tagged(variant: str) -> None:
    options = options_for(variant)
    template = environment_template(options)
    expected = environment_tags(options)
    assert expected[ENVIRONMENT_TAG] == "default"
    for logical_id, resource in template["Resources"].items():
        if resource["Type"] not in TAGGABLE:
            continue
        properties = resource["Properties"]
        if resource["Type"] == "AWS::EC2::LaunchTemplate":
            tags = properties["TagSpecifications"][0]["Tags"]
        else:
            tags = properties["Tags"]
        as_dict = tags if isinstance(tags, dict) else {t["Key"]: t["Value"] for t in tags}
        assert as_dict == expected, logical_id
    knot = knot_template(options, "pi-calc")
    role_tags = {t["Key"]: t["Value"] for t in knot["Resources"]["JobRole"]["Properties"]["Tags"]}
    assert role_tags[KNOT_TAG] == "pi-calc"


def test_ec2_has_an_instance_role_and_fargate_an_execution_role() -> None:
    ec2 = environment_template(aws_options())
    fargate = environment_template(aws_options(compute_type="FARGATE"))
    assert {"InstanceRole", "InstanceProfile"} <= set(ec2["Resources"])
    assert "JobExecutionRole" not in ec2["Resources"]
    assert "JobExecutionRole" in fargate["Resources"]
    assert not {"InstanceRole", "InstanceProfile", "LaunchTemplate"} & set(fargate["Resources"])
    fargate_resources = fargate["Resources"]["ComputeEnvironment"]["Properties"]["ComputeResources"]
    assert set(fargate_resources) == {"Type", "MaxvCpus", "Subnets", "SecurityGroupIds"}
    assert "JobExecutionRoleArn" in fargate["Outputs"] and "InstanceRoleArn" in ec2["Outputs"]


def test_volume_size_goes_into_the_launch_template() -> None:
    plain = environment_template(aws_options())["Resources"]["LaunchTemplate"]
    assert "BlockDeviceMappings" not in plain["Properties"]["LaunchTemplateData"]
    template = environment_template(aws_options(volume_size=200))
    data = template["Resources"]["LaunchTemplate"]["Properties"]["LaunchTemplateData"]
    assert data["BlockDeviceMappings"][0]["Ebs"]["VolumeSize"] == {"Ref": "VolumeSize"}
    resources = template["Resources"]["ComputeEnvironment"]["Properties"]["ComputeResources"]
    assert resources["LaunchTemplate"]["LaunchTemplateId"] == {"Ref": "LaunchTemplate"}


@pytest.mark.parametrize("variant", ["ec2-default-vpc", "ec2-new-vpc", "spot-every-option"])
def test_instances_require_imdsv2_with_one_hop(variant: str) -> None:
    # A job's container (one hop behind the Docker bridge) cannot reach the instance role.
    template = environment_template(options_for(variant))
    data = template["Resources"]["LaunchTemplate"]["Properties"]["LaunchTemplateData"]
    assert data["MetadataOptions"] == {
        "HttpEndpoint": "enabled",
        "HttpTokens": "required",
        "HttpPutResponseHopLimit": 1,
    }
    resources = template["Resources"]["ComputeEnvironment"]["Properties"]["ComputeResources"]
    assert resources["LaunchTemplate"] == {
        "LaunchTemplateId": {"Ref": "LaunchTemplate"},
        "Version": {"Fn::GetAtt": ["LaunchTemplate", "LatestVersionNumber"]},
    }


SECRET = "arn:aws:secretsmanager:us-east-1:123456789012:secret:api-token-AbCdEf"
PARTIAL_SECRET = "arn:aws:secretsmanager:us-east-1:123456789012:secret:db"
PARAMETER = "arn:aws:ssm:us-east-1:123456789012:parameter/team/token"


@pytest.mark.parametrize("compute_type", ["EC2", "FARGATE"])
def test_secrets_are_readable_only_by_the_knots_execution_role(compute_type: str) -> None:
    options = aws_options(
        compute_type=compute_type,
        secrets={"A": SECRET, "B": f"{SECRET}:password::", "C": PARTIAL_SECRET, "D": PARAMETER},
    )
    template = knot_template(options, "pi-calc")
    assert lint_errors(template) == []
    assert template["Outputs"]["JobExecutionRoleArn"] == {
        "Value": {"Fn::GetAtt": ["JobExecutionRole", "Arn"]}
    }
    role = template["Resources"]["JobExecutionRole"]["Properties"]
    statements = role["Policies"][0]["PolicyDocument"]["Statement"]
    # Exactly these secrets and parameters (a partial ARN takes Secrets Manager's 6-character
    # suffix, never a wider wildcard), and only the read actions.
    assert [(s["Action"], s["Resource"]) for s in statements] == [
        ("secretsmanager:GetSecretValue", sorted([f"{PARTIAL_SECRET}-??????", SECRET])),
        ("ssm:GetParameters", [PARAMETER]),
    ]
    assert all(s["Effect"] == "Allow" for s in statements)
    # On EC2 the role does nothing else (the instance role pulls the image); on Fargate it
    # also pulls the image and writes the log, as the environment's execution role does.
    assert ("ManagedPolicyArns" in role) == (compute_type == "FARGATE")
    # The job role (the code's own access) is not the one that reads the secrets.
    job_role = template["Resources"]["JobRole"]["Properties"]
    assert "secretsmanager" not in json.dumps(job_role) and "ssm:" not in json.dumps(job_role)


def test_without_secrets_the_knot_stack_has_no_execution_role() -> None:
    template = knot_template(aws_options(), "pi-calc")
    assert "JobExecutionRole" not in template["Resources"]
    assert "JobExecutionRoleArn" not in template["Outputs"]


def test_new_vpc_has_public_subnets_and_an_internet_route() -> None:
    template = environment_template(aws_options(use_default_vpc=False))
    assert "VpcId" not in template["Parameters"]
    subnets = resources_of(template, "AWS::EC2::Subnet")
    assert len(subnets) == 2
    assert all(s["Properties"]["MapPublicIpOnLaunch"] for s in subnets.values())
    (route,) = resources_of(template, "AWS::EC2::Route").values()
    assert route["Properties"]["DestinationCidrBlock"] == "0.0.0.0/0"
    assert len(resources_of(template, "AWS::EC2::SubnetRouteTableAssociation")) == 2


def test_environment_outputs() -> None:
    outputs = environment_template(aws_options())["Outputs"]
    assert {
        "JobQueueArn",
        "ComputeEnvironmentArn",
        "ServiceRoleArn",
        "SecurityGroupId",
        "VpcId",
        "SubnetIds",
        "ComputeType",
        "InstanceRoleArn",
    } <= set(outputs)


def test_job_role_reaches_only_the_knots_prefix_and_reads_results() -> None:
    options = aws_options(
        job_role_policies=["arn:aws:iam::aws:policy/AmazonDynamoDBReadOnlyAccess"]
    )
    role = knot_template(options, "pi-calc")["Resources"]["JobRole"]["Properties"]
    statements = role["Policies"][0]["PolicyDocument"]["Statement"]
    resources = [json.dumps(s["Resource"]) for s in statements]
    assert resources == [
        json.dumps({"Fn::Sub": "arn:${AWS::Partition}:s3:::${Bucket}/${Prefix}*"}),
        json.dumps({"Fn::Sub": "arn:${AWS::Partition}:s3:::${Bucket}"}),
        json.dumps({"Fn::Sub": "arn:${AWS::Partition}:s3:::${Bucket}/${Results}*"}),
        json.dumps({"Fn::Sub": "arn:${AWS::Partition}:s3:::${Bucket}"}),
    ]
    assert statements[1]["Condition"] == {"StringLike": {"s3:prefix": {"Fn::Sub": "${Prefix}*"}}}
    # A pipeline's workers read the results of the run upstream (maybe another knot's): the
    # results only, and only to read them.
    assert statements[2]["Action"] == "s3:GetObject"
    assert statements[3]["Condition"] == {"StringLike": {"s3:prefix": {"Fn::Sub": "${Results}*"}}}
    actions = {
        a
        for s in statements
        for a in ([s["Action"]] if isinstance(s["Action"], str) else s["Action"])
    }
    assert all(action.startswith("s3:") and "*" not in action for action in actions)
    # Workers read inputs and write whole records; deleting is the client's (clobber, gc).
    assert actions == {"s3:GetObject", "s3:PutObject", "s3:ListBucket"}
    assert role["ManagedPolicyArns"] == list(options.job_role_policies)
    principal = role["AssumeRolePolicyDocument"]["Statement"][0]["Principal"]
    assert principal == {"Service": "ecs-tasks.amazonaws.com"}


def test_knot_parameters_and_name() -> None:
    assert knot_parameters(bucket="b-1", prefix="knots/pi-calc/") == {
        "Bucket": "b-1",
        "Prefix": "knots/pi-calc/",
        "Results": "knots/*/runs/*/results/",
    }
    rooted = knot_parameters(bucket="b-1", prefix="team/a/knots/pi-calc/")
    assert rooted["Results"] == "team/a/knots/*/runs/*/results/"
    for prefix in ["", "knots/pi-calc", "/knots/pi-calc/", "knots/*/"]:
        with pytest.raises(ConfigurationError):
            knot_parameters(bucket="b-1", prefix=prefix)
    assert knot_stack_name("pi-calc") == "aioknot-knot-pi-calc"


@pytest.mark.parametrize("variant", VARIANTS)
def test_templates_fit_in_a_template_body(variant: str) -> None:
    # Bigger bodies would have to go through S3 (TemplateURL).
    assert len(json.dumps(environment_template(options_for(variant)))) < 51_200
