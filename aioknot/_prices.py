"""AWS list prices that `Estimate` turns into the cost of a run: a dated snapshot.

These are AWS's published on-demand list prices for Linux in one region, copied by hand from
AWS's public pricing pages (no price API is called: the library works offline, and an estimate
must not cost a request). They are a snapshot, to be refreshed when AWS changes them:

* EC2 on-demand: https://aws.amazon.com/ec2/pricing/on-demand/ (Linux, per instance-hour);
* Fargate: https://aws.amazon.com/fargate/pricing/ (Linux/x86, per vCPU-hour and GB-hour,
  billed per second with a one-minute minimum per task);
* Spot: prices move with supply and demand (https://aws.amazon.com/ec2/spot/pricing/), so
  no Spot price is kept: a Spot estimate is the on-demand price less a stated typical
  discount (`SPOT_DISCOUNT`; AWS advertises "up to 90%" for EC2 Spot and "up to 70%" for
  Fargate Spot). A real bill depends on the day and the instance types Batch picks.

Batch itself costs nothing beyond the instances or Fargate tasks it runs; S3 requests and
storage, data transfer and CloudWatch logs are left out (small next to compute for most
runs). Other regions differ by a few percent to a few tens of percent: the estimate names the
region its prices are for.
"""

from __future__ import annotations

from dataclasses import dataclass

# When the figures below were taken from AWS's pages, and for which region.
PRICES_AS_OF = "2024-06-01"
PRICE_REGION = "us-east-1"
PRICE_SOURCE = (
    "AWS on-demand list prices (aws.amazon.com/ec2/pricing/on-demand, "
    "aws.amazon.com/fargate/pricing), Linux, us-east-1, as of 2024-06-01"
)

# The share taken off on-demand prices for Spot capacity: a typical figure, not a quote.
SPOT_DISCOUNT = {"EC2": 0.60, "FARGATE": 0.70}

# Fargate, Linux/x86, us-east-1: USD per vCPU-hour and per GB-hour of memory.
FARGATE_VCPU_HOUR = 0.04048
FARGATE_GB_HOUR = 0.004445
FARGATE_MINIMUM_SECONDS = 60.0  # a task is billed at least one minute


@dataclass(frozen=True)
class InstanceType:
    name: str  # "c7i.large"
    vcpus: int
    memory_gib: float
    hourly: float  # USD, on-demand, Linux, PRICE_REGION

    @property
    def family(self) -> str:
        return self.name.partition(".")[0]


# What each family is for, as AWS describes it: by memory per vCPU (2, 4 and 8 GiB).
FAMILY_KINDS = {"c7i": "compute-optimised", "m7i": "general-purpose", "r7i": "memory-optimised"}
# Memory per vCPU each family gives (GiB); a job is placed in the leanest family that fits.
FAMILY_GIB_PER_VCPU = {"c7i": 2.0, "m7i": 4.0, "r7i": 8.0}

_SIZES = (
    ("large", 2),
    ("xlarge", 4),
    ("2xlarge", 8),
    ("4xlarge", 16),
    ("8xlarge", 32),
    ("16xlarge", 64),
)
# The hourly price of each family's .large; the bigger sizes are that times their vCPUs / 2
# on AWS's page, exactly (c7i.16xlarge: 2.856 = 0.08925 * 32).
_LARGE_HOURLY = {"c7i": 0.08925, "m7i": 0.1008, "r7i": 0.1323}

INSTANCE_TYPES: tuple[InstanceType, ...] = tuple(
    InstanceType(
        f"{family}.{size}",
        vcpus,
        vcpus * FAMILY_GIB_PER_VCPU[family],
        round(_LARGE_HOURLY[family] * vcpus / 2, 5),
    )
    for family in ("c7i", "m7i", "r7i")
    for size, vcpus in _SIZES
)

# Memory of an instance that jobs cannot have: the ECS agent and the OS keep some (AWS's
# docs: "memory management" for Batch compute resources). A job's share of an instance is
# judged against the rest.
INSTANCE_RESERVED_SHARE = 0.08
