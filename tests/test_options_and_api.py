"""Bad names and options fail early and clearly; the public surface is pinned."""

from __future__ import annotations

import pytest

import aioknot
from aioknot import AsyncKnot, ConfigurationError


def f(x: int) -> int:
    return x


def test_the_public_surface_is_exactly_this() -> None:
    assert aioknot.__all__ == sorted(aioknot.__all__)
    assert aioknot.__all__ == [
        "AsyncKnot",
        "ConfigurationError",
        "Estimate",
        "Executor",
        "ImageBuildError",
        "Job",
        "Knot",
        "KnotError",
        "Resources",
        "Run",
        "RunSummary",
        "SerializationError",
        "StackError",
        "StoreError",
        "TaskError",
        "TaskFailure",
        "TaskLost",
        "WatchTimeout",
        "__version__",
    ]
    for name in aioknot.__all__:
        assert hasattr(aioknot, name)
    for error in ("ConfigurationError", "SerializationError", "TaskError", "TaskLost"):
        assert issubclass(getattr(aioknot, error), aioknot.KnotError)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "has space"}, "letters, digits and hyphens"),
        ({"name": "1starts-with-digit"}, "starting with a letter"),
        ({"name": "x" * 49}, "1 to 48"),
        ({"backend": "kubernetes"}, "not a backend"),
        ({"workers": -1}, "positive whole number"),
        ({"vcpu": 2}, "Did you mean vcpus"),
        ({"memmory": 2}, "Did you mean memory"),
        ({"retries": 11}, "retries"),
        ({"progress": "yes"}, "callable"),
    ],
)
def test_bad_input_is_a_configuration_error_at_construction(
    kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigurationError, match=message):
        AsyncKnot(f, **{"backend": "local", **kwargs})  # type: ignore[arg-type]


def test_the_backend_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIOKNOT_BACKEND", "aws")
    assert AsyncKnot(f).backend == "aws"
    monkeypatch.setenv("AIOKNOT_BACKEND", "nope")
    with pytest.raises(ConfigurationError, match="AIOKNOT_BACKEND"):
        AsyncKnot(f)
    monkeypatch.delenv("AIOKNOT_BACKEND")
    assert AsyncKnot(f).backend == "local"


def test_default_names_follow_the_function() -> None:
    def monte_pi_count(n: int) -> int:
        return n

    assert AsyncKnot(monte_pi_count).name == "monte-pi-count"
    assert AsyncKnot(lambda x: x).name == "lambda"


async def test_inputs_must_be_iterable(aioknot_home: str) -> None:
    async with AsyncKnot(f, backend="local") as knot:
        with pytest.raises(ConfigurationError, match="iterable"):
            await knot.map(5)  # type: ignore[arg-type]
        with pytest.raises(ConfigurationError, match="iterable"):
            knot.amap("abc")


async def test_attach_checks_the_run_id(aioknot_home: str) -> None:
    async with AsyncKnot(f, backend="local") as knot:
        with pytest.raises(ConfigurationError, match="not a run id"):
            await knot.attach("../../etc")
        with pytest.raises(ConfigurationError, match="has no run"):
            await knot.attach("20200101T000000-abcdef")


def test_task_failures_survive_pickling() -> None:
    import pickle

    error = aioknot.TaskError(
        index=3, remote_type="ValueError", remote_message="m", remote_traceback="Traceback...\n"
    )
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.index, copy.remote_type, str(copy)) == (3, "ValueError", str(error))
    lost = aioknot.TaskLost(index=1, reason="killed", log="stream", exit_code=137)
    copy_lost = pickle.loads(pickle.dumps(lost))
    assert (copy_lost.index, copy_lost.reason, copy_lost.exit_code) == (1, "killed", 137)


def test_the_typed_options_are_exactly_the_options_a_knot_takes() -> None:
    from aioknot._backends import backend_kinds
    from aioknot._options import CORE_OPTIONS, KnotOptionsDict

    known = set(CORE_OPTIONS).union(*(kind.option_names for kind in backend_kinds()))
    assert set(KnotOptionsDict.__annotations__) == known
    # Every option belongs to exactly one parser: the core's or one backend's.
    owners = [set(CORE_OPTIONS), *(kind.option_names for kind in backend_kinds())]
    assert sum(len(names) for names in owners) == len(known)


def test_timeout_and_retries_mean_the_same_on_every_backend(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Locally any positive number of seconds is a time limit; Batch's minimum of 60 whole
    # seconds binds only a knot that runs on Batch, and says so before anything exists.
    local = aioknot.AsyncKnot(abs, name="limits", backend="local", timeout=0.5, retries=2)
    assert (local.options.timeout, local.options.retries) == (0.5, 2)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with pytest.raises(aioknot.ConfigurationError, match="too short for AWS Batch"):
        aioknot.AsyncKnot(abs, name="limits", backend="aws", timeout=30)
    for bad in (0, -1, "60", True):
        with pytest.raises(aioknot.ConfigurationError, match="timeout= must be a positive"):
            aioknot.AsyncKnot(abs, name="limits", timeout=bad)  # type: ignore[arg-type]
    for bad_retries in (0, 11, 1.5):
        with pytest.raises(aioknot.ConfigurationError, match="retries= is the number"):
            aioknot.AsyncKnot(abs, name="limits", retries=bad_retries)  # type: ignore[arg-type]
