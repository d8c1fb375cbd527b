"""Where local workers come from: the zygote (aioknot/_backends/zygote.py), both ways it starts.

Each test runs a real client script in a fresh interpreter (``AIOKNOT_ZYGOTE`` picks how its
zygote starts: forked from the client, or the worker file run with ``--zygote``), with real
worker processes, and real SIGKILLs of the client and of the zygote.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from helpers.processes import wait_until_gone
from helpers.waiting import wait_until

from aioknot._worker import WORKER_NAME, ZYGOTE_NAME

pytestmark = pytest.mark.usefixtures("aioknot_home")

CLIENT = textwrap.dedent(
    """
    import asyncio, os, sys, threading, time
    import aioknot

    def work(x):
        if x == -1:
            time.sleep(600)  # the input the test kills the client or the zygote under
        return (x * x, os.getpid(), os.getcwd(), os.environ.get("AIOKNOT_TEST_MARK"))

    async def main():
        async with aioknot.AsyncKnot(work, backend="local", workers=2) as knot:
            results = await (await knot.map(range(200))).gather()
            print("squares", sum(r[0] for r in results), flush=True)
            print("pids", *sorted({r[1] for r in results}), flush=True)
            print("cwd", results[0][2], "mark", results[0][3], flush=True)
            if "--hang" in sys.argv:
                run = await knot.map([-1, -1])
                print("hanging", flush=True)
                await run.gather()

    if "--thread" in sys.argv:  # a thread before the knot: forking the client is not safe
        threading.Thread(target=time.sleep, args=(600,), daemon=True).start()
    asyncio.run(main())
    """
)


def _name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _parent(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return 0


def _children(pid: int, name: str) -> list[int]:
    return [
        int(entry)
        for entry in os.listdir("/proc")
        if entry.isdigit() and _parent(int(entry)) == pid and _name(int(entry)) == name
    ]


def _start(tmp_path: Path, mode: str, *arguments: str) -> subprocess.Popen[str]:
    script = tmp_path / "client.py"
    script.write_text(CLIENT)
    workdir = tmp_path / "workdir"
    workdir.mkdir(exist_ok=True)
    environment = {**os.environ, "AIOKNOT_ZYGOTE": mode, "AIOKNOT_TEST_MARK": "marked"}
    return subprocess.Popen(
        [sys.executable, str(script), *arguments],
        cwd=workdir,
        env=environment,
        stdout=subprocess.PIPE,
        text=True,
    )


def _lines_until(client: subprocess.Popen[str], last: str) -> dict[str, list[str]]:
    seen: dict[str, list[str]] = {}
    assert client.stdout is not None
    for line in client.stdout:
        word, *rest = line.split()
        seen[word] = rest
        if word == last:
            break
    return seen


def _run_client(tmp_path: Path, source: str, **environment: str) -> list[str]:
    """Run ``source`` as a client script in a fresh interpreter (with ``environment`` added);
    the words it printed, once it exited 0."""
    script = tmp_path / "client.py"
    script.write_text(source)
    done = subprocess.run(
        [sys.executable, str(script)],
        env={**os.environ, **environment},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.split()


@pytest.mark.parametrize(
    ("mode", "arguments"), [("fork", ()), ("exec", ()), ("auto", ("--thread",))]
)
def test_workers_come_from_one_zygote_and_run_in_the_clients_directory_and_environment(
    tmp_path: Path, mode: str, arguments: tuple[str, ...]
) -> None:
    client = _start(tmp_path, mode, *arguments, "--hang")
    try:
        seen = _lines_until(client, "hanging")
        assert seen["squares"] == [str(sum(x * x for x in range(200)))]
        assert seen["cwd"] == [str(tmp_path / "workdir"), "mark", "marked"]
        zygotes = _children(client.pid, ZYGOTE_NAME)
        assert len(zygotes) == 1  # one per client process, whichever way it started
        workers = wait_until(
            lambda: _children(zygotes[0], WORKER_NAME) or None, timeout=30, what="workers"
        )
        # The processes that ran the inputs are the zygote's children named as workers.
        assert {int(pid) for pid in seen["pids"]} <= set(workers)
        if mode == "exec" or arguments:
            # A fresh interpreter: the worker file with --zygote, not a copy of the client.
            assert "--zygote" in Path(f"/proc/{zygotes[0]}/cmdline").read_text()
        else:
            assert "--zygote" not in Path(f"/proc/{zygotes[0]}/cmdline").read_text()
        # A client that dies the hard way leaves nothing running: the zygote sees its
        # control socket close, the workers their parent go.
        client.send_signal(signal.SIGKILL)
        client.wait(timeout=30)
        assert wait_until_gone([*zygotes, *workers], timeout=30) == []
    finally:
        client.kill()
        client.wait(timeout=30)
        if client.stdout is not None:
            client.stdout.close()


KILL_ZYGOTE = textwrap.dedent(
    """
    import asyncio, os, signal, sys
    import aioknot
    from aioknot._backends import zygote

    def square(x):
        return x * x

    async def main():
        async with aioknot.AsyncKnot(square, backend="local", workers=2) as knot:
            assert await (await knot.map(range(50))).gather() == [x * x for x in range(50)]
        os.kill(zygote._zygote.pid, signal.SIGKILL)  # the zygote dies between knots
        async with aioknot.AsyncKnot(square, backend="local", workers=2) as knot:
            assert await (await knot.map(range(50))).gather() == [x * x for x in range(50)]
        print("ok", flush=True)

    asyncio.run(main())
    """
)


@pytest.mark.parametrize("mode", ["fork", "exec"])
def test_a_killed_zygote_is_replaced_by_the_next_worker_that_is_needed(
    tmp_path: Path, mode: str
) -> None:
    assert _run_client(tmp_path, KILL_ZYGOTE, AIOKNOT_ZYGOTE=mode) == ["ok"]


BIG_ENVIRONMENT = textwrap.dedent(
    """
    import asyncio, os
    import aioknot

    def mark_length(x):
        return sum(len(os.environ[f"AIOKNOT_TEST_BIG_{i}"]) for i in range(10))

    async def main():
        async with aioknot.AsyncKnot(mark_length, backend="local", workers=2) as knot:
            print(*set(await (await knot.map(range(20))).gather()), flush=True)

    asyncio.run(main())
    """
)


@pytest.mark.parametrize("mode", ["fork", "exec"])
def test_a_request_larger_than_the_sockets_buffer_reaches_the_zygote_whole(
    tmp_path: Path, mode: str
) -> None:
    """Each worker request carries the client's environment: one of 1 MB (ten variables of
    100 KB: the kernel's limit for one) is sent in parts (the descriptors with the first)
    and read back whole."""
    big = {f"AIOKNOT_TEST_BIG_{i}": "x" * 100_000 for i in range(10)}
    printed = _run_client(tmp_path, BIG_ENVIRONMENT, AIOKNOT_ZYGOTE=mode, **big)
    assert printed == [str(sum(len(value) for value in big.values()))]


FORK_FAILS_ONCE = textwrap.dedent(
    """
    import asyncio, errno, os, time
    os.environ["AIOKNOT_ZYGOTE"] = "fork"
    CLIENT = os.getpid()
    real_fork, forks = os.fork, [0]

    # Mocked: the zygote's third fork fails with EAGAIN, as under a process limit. A real one
    # cannot be had here: root ignores RLIMIT_NPROC, and a cgroup's pids.max would hold the
    # test runner's own processes too. The zygote, forked from this process, inherits it.
    def fork():
        if os.getpid() != CLIENT:
            forks[0] += 1
            if forks[0] == 3:
                raise OSError(errno.EAGAIN, "Resource temporarily unavailable")
        return real_fork()

    os.fork = fork
    import aioknot

    def work(x):
        if x == 1:
            time.sleep(0.3)
            os._exit(3)  # this worker dies: its replacement is the fork that fails
        time.sleep(1.5)
        return x

    async def main():
        async with aioknot.AsyncKnot(work, backend="local", workers=2) as knot:
            run = await knot.map([0, 1, 2])
            values = await run.gather(return_exceptions=True)
            print(values[0], type(values[1]).__name__, values[2], flush=True)

    asyncio.run(main())
    """
)


def test_a_worker_that_cannot_be_forked_is_tried_again_and_loses_nothing(tmp_path: Path) -> None:
    # Input 1 died of its own exit only; inputs 0 and 2 returned.
    assert _run_client(tmp_path, FORK_FAILS_ONCE) == ["0", "TaskLost", "2"]


KILLED_ZYGOTE_MID_RUN = textwrap.dedent(
    """
    import asyncio, os, signal, time
    import aioknot
    from aioknot._backends import zygote

    def work(x):
        time.sleep(1.5)
        return x

    async def main():
        async with aioknot.AsyncKnot(work, backend="local", workers=2) as knot:
            run = await knot.map([1, 2, 3])
            await asyncio.sleep(0.5)
            os.kill(zygote._zygote.pid, signal.SIGKILL)  # as the out-of-memory killer might
            print(*await run.gather(), flush=True)

    asyncio.run(main())
    """
)


@pytest.mark.parametrize("mode", ["fork", "exec"])
def test_workers_outlive_a_killed_zygote_and_finish_their_inputs(tmp_path: Path, mode: str) -> None:
    """Workers watch the client, not the zygote: a SIGKILLed zygote loses no input (the
    workers it forked go on serving the client; it used to take them down with it)."""
    assert _run_client(tmp_path, KILLED_ZYGOTE_MID_RUN, AIOKNOT_ZYGOTE=mode) == ["1", "2", "3"]
