"""Every error aioknot raises, in one place.

    KnotError                       the root: ``except aioknot.KnotError`` catches all of ours
    ├── ConfigurationError          a bad name, option or missing credentials; raised before
    │                               any cloud resource is created or any money is spent
    ├── SerializationError          the function or an input cannot be pickled (names the index)
    ├── TaskFailure                 one input did not produce a value
    │   ├── TaskError               the user's function raised; carries the remote traceback
    │   └── TaskLost                the task died without a result (killed, OOM, spot, timeout)
    ├── StoreError                  the store (S3 or a local directory) refused a request
    ├── StackError                  the environment stack failed; lists each failed resource
    ├── WatchTimeout                a sustained outage ended the watch of a run: its jobs keep
    │                               running, and the run can be re-attached later
    └── ImageBuildError             the worker image could not be built or pushed

Errors of the libraries underneath (botocore, aiodocker, OSError) are translated into these at
one boundary, `aioknot._errors`, with ``raise ... from`` so the original stays visible.
"""

from __future__ import annotations

from collections.abc import Sequence


class KnotError(Exception):
    """The root of every error aioknot raises on purpose.

    ``run_id`` and ``job_id`` name the run and the AWS Batch job the error is about, when it
    is about one (the error boundary, `aioknot._errors`, sets them); None otherwise.
    """

    run_id: str | None = None
    job_id: str | None = None


class ConfigurationError(KnotError, ValueError):
    """A name, option or credential is wrong. Says what was wrong and what to do."""


class SerializationError(KnotError, TypeError):
    """The function or an input cannot be pickled with cloudpickle.

    ``index`` is the position of the input in the iterable (``None`` for the function).
    """

    def __init__(self, message: str, *, index: int | None = None) -> None:
        super().__init__(message)
        self.index = index


class TaskFailure(KnotError):
    """One input of a run did not produce a value. ``index`` is its position in the inputs.

    ``upstream`` is ``("<knot>/<run id>", index)`` when the input is a pipeline's and was not
    run because the upstream input it stands for failed (that input's failure is described).
    """

    upstream: tuple[str, int] | None = None

    def __init__(self, message: str, *, index: int, run_id: str | None = None) -> None:
        super().__init__(message)
        self.index = index
        self.run_id = run_id


def _not_run(upstream: tuple[str, int] | None) -> str:
    return f"was not run: its input, input {upstream[1]} of run {upstream[0]}, " if upstream else ""


class TaskError(TaskFailure):
    """The user's function raised on one input.

    ``remote_type`` is the exception's qualified type name, ``remote_message`` its message and
    ``remote_traceback`` the traceback text from the worker. ``exception`` is the original
    exception object when it could be pickled back, else ``None``.
    """

    def __init__(
        self,
        *,
        index: int,
        remote_type: str,
        remote_message: str,
        remote_traceback: str,
        exception: BaseException | None = None,
        run_id: str | None = None,
        upstream: tuple[str, int] | None = None,
    ) -> None:
        self.remote_type = remote_type
        self.remote_message = remote_message
        self.remote_traceback = remote_traceback
        self.exception = exception
        self.upstream = upstream
        super().__init__(
            f"input {index} {_not_run(upstream)}raised {remote_type}: {remote_message}\n\n"
            f"Remote traceback:\n{remote_traceback.rstrip()}",
            index=index,
            run_id=run_id,
        )

    def __reduce__(self) -> tuple[object, ...]:
        # Keyword-only __init__: rebuild through it so a pickled copy reads the same.
        # The original exception is left behind: it may not pickle where it is going.
        return (
            _rebuild_task_error,
            (
                self.index,
                self.remote_type,
                self.remote_message,
                self.remote_traceback,
                self.run_id,
                self.upstream,
            ),
        )


def _rebuild_task_error(
    index: int,
    remote_type: str,
    remote_message: str,
    remote_traceback: str,
    run_id: str | None,
    upstream: tuple[str, int] | None = None,
) -> TaskError:
    return TaskError(
        index=index,
        remote_type=remote_type,
        remote_message=remote_message,
        remote_traceback=remote_traceback,
        run_id=run_id,
        upstream=upstream,
    )


class TaskLost(TaskFailure):
    """A task died without writing a result: killed, out of memory, spot reclaim, timeout.

    ``reason`` is what the scheduler said; ``log`` says where the task's log is, when known;
    ``exit_code`` is the process's exit code (negative: the signal that killed it locally);
    ``job_id`` names the Batch job (``<array job>:<child>``) that ran it and ``attempts`` how
    many attempts Batch made, when the backend knows.
    """

    def __init__(
        self,
        *,
        index: int,
        reason: str,
        log: str | None = None,
        exit_code: int | None = None,
        run_id: str | None = None,
        job_id: str | None = None,
        attempts: int | None = None,
        upstream: tuple[str, int] | None = None,
    ) -> None:
        self.reason = reason
        self.log = log
        self.exit_code = exit_code
        self.job_id = job_id
        self.attempts = attempts
        self.upstream = upstream
        details = []
        if job_id:
            details.append(f"job {job_id}")
        if attempts:
            details.append(f"{attempts} attempt{'s' if attempts != 1 else ''}")
        if exit_code is not None:
            details.append(f"exit code {exit_code}")
        if log:
            details.append(f"log: {log}")
        where = f" ({', '.join(details)})" if details else ""
        super().__init__(
            f"input {index} {_not_run(upstream)}was lost: {reason}{where}",
            index=index,
            run_id=run_id,
        )

    def __reduce__(self) -> tuple[object, ...]:
        return (
            _rebuild_task_lost,
            (
                self.index,
                self.reason,
                self.log,
                self.exit_code,
                self.run_id,
                self.job_id,
                self.attempts,
                self.upstream,
            ),
        )


def _rebuild_task_lost(
    index: int,
    reason: str,
    log: str | None,
    exit_code: int | None,
    run_id: str | None,
    job_id: str | None = None,
    attempts: int | None = None,
    upstream: tuple[str, int] | None = None,
) -> TaskLost:
    return TaskLost(
        index=index,
        reason=reason,
        log=log,
        exit_code=exit_code,
        upstream=upstream,
        run_id=run_id,
        job_id=job_id,
        attempts=attempts,
    )


class StoreError(KnotError):
    """The store refused a request (missing bucket, access denied, disk full, ...)."""


class StackError(KnotError):
    """The environment stack could not be created or updated.

    ``failures`` holds ``(logical resource id, resource type, reason)`` for each resource that
    failed, as CloudFormation reported them.
    """

    def __init__(self, message: str, failures: Sequence[tuple[str, str, str]] = ()) -> None:
        self.failures = list(failures)
        lines = [message] + [f"  {rid} ({rtype}): {reason}" for rid, rtype, reason in failures]
        super().__init__("\n".join(lines))


class WatchTimeout(KnotError, TimeoutError):
    """Watching a run saw no successful answer from the backend (Batch) for ``watch_timeout``.

    Nothing was cancelled: the run's jobs keep running and its results keep being stored.
    ``run_id`` names the run to re-attach (``await knot.attach(run_id)``) once the service
    answers again; ``__cause__`` is the last error seen.
    """

    def __init__(self, message: str, *, run_id: str) -> None:
        super().__init__(message)
        self.run_id = run_id


class ImageBuildError(KnotError):
    """The worker image could not be built or pushed."""
