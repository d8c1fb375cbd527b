"""Where the local backend's worker processes come from: a zygote that forks them.

A fresh interpreter takes tens of milliseconds to start and import what the worker needs; a
fork of a process that has done so serves in ~5 ms (~2 ms of it the fork). So each client
process keeps one zygote, a small process that runs `aioknot._worker.zygote` and forks a
worker whenever asked (the forkserver idea of ``multiprocessing``). The worker is the same
file as in the Batch container, and serves the same way (`aioknot._worker.serve`).

The zygote is forked from the client itself when that is safe: on Linux, from a process with
one thread (a fork copies only the calling thread: a lock another thread held would stay held
for ever in the child) and no more than `FORK_MAX_RSS` of memory (the zygote would pin a
copy-on-write image of it). `Knot` and `AsyncKnot` ask for it in their constructor, which in a
script runs before any thread exists. Otherwise (a notebook's kernel has threads, an
``AIOKNOT_ZYGOTE=exec`` environment) the zygote is the worker file run as a fresh interpreter
with ``--zygote``, once per client process.

The client speaks to the zygote on a Unix stream socket (a length-prefixed request per
worker, file descriptors attached): see the wire format in `aioknot._worker`. The zygote
ends when the client's end closes, which the kernel does when the client exits, however it
exits; its workers then notice that their parent is gone and stop
(`aioknot._worker._watch_parent`).
"""

from __future__ import annotations

import atexit
import gc
import os
import signal
import socket
import sys
import threading

import anyio
import anyio.abc
import anyio.lowlevel
from anyio.streams.buffered import BufferedByteReceiveStream

from .. import _worker

WORKER_PATH = os.path.realpath(_worker.__file__)
FORK_MAX_RSS = 512 << 20
# How the zygote starts: "auto" (fork when safe, else exec), "fork" or "exec" (for tests and
# for users who want a fresh interpreter whatever the cost).
ZYGOTE_MODE_VARIABLE = "AIOKNOT_ZYGOTE"


class WorkerStartError(OSError):
    """The zygote could not start a worker (it died, or could not fork)."""


class _SocketStream(anyio.abc.ByteStream):
    """A connected non-blocking socket as an anyio byte stream.

    Not anyio's own socket stream: on asyncio, a read of it cancelled just as the socket
    becomes readable (a knot closing while a worker ends) makes asyncio log an
    InvalidStateError; ``anyio.wait_readable`` has no such race.
    """

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self._socket = sock

    async def receive(self, max_bytes: int = 65536) -> bytes:
        while True:
            try:
                data = self._socket.recv(max_bytes)
            except BlockingIOError:
                await anyio.wait_readable(self._socket)
                continue
            except OSError as error:
                if self._socket.fileno() < 0:
                    raise anyio.ClosedResourceError from None
                raise anyio.BrokenResourceError from error
            if not data:
                raise anyio.EndOfStream
            await anyio.lowlevel.checkpoint_if_cancelled()
            return data

    async def send(self, item: bytes) -> None:
        view = memoryview(item)
        while view:
            try:
                view = view[self._socket.send(view) :]
            except BlockingIOError:
                await anyio.wait_writable(self._socket)
            except OSError as error:
                if self._socket.fileno() < 0:
                    raise anyio.ClosedResourceError from None
                raise anyio.BrokenResourceError from error
        await anyio.lowlevel.checkpoint()

    async def send_eof(self) -> None:
        self._socket.shutdown(socket.SHUT_WR)

    async def aclose(self) -> None:
        if self._socket.fileno() >= 0:
            anyio.notify_closing(self._socket)  # wakes a reader or writer waiting on it
            self._socket.close()
        await anyio.lowlevel.checkpoint()


class WorkerProcess:
    """One worker process: its pid (which leads its process group), its channel (chunks in,
    reports out) and how it ended, as the zygote that forked and reaped it tells."""

    def __init__(
        self,
        pid: int,
        channel: anyio.abc.ByteStream,
        status: BufferedByteReceiveStream,
        status_stream: anyio.abc.ByteStream,
    ) -> None:
        self.pid = pid
        self.channel = channel
        self.lines = BufferedByteReceiveStream(channel)  # its reports, one per line
        self._status = status
        self._status_stream = status_stream
        self.returncode: int | None = None
        self.ended = False  # the zygote reaped it (returncode) or is gone (None)

    async def send(self, data: bytes) -> None:
        await self.channel.send(data)

    async def wait(self) -> int | None:
        """Its exit code (negative: the signal that killed it); None if the zygote died first."""
        if not self.ended:
            try:
                line = await self._status.receive_until(b"\n", 64)
                kind, _, value = line.decode().partition(" ")
                self.returncode = int(value) if kind == "exit" else None
            except (
                anyio.EndOfStream,
                anyio.IncompleteRead,
                anyio.ClosedResourceError,
                anyio.BrokenResourceError,
            ):
                self.returncode = None  # the zygote is gone: how it ended is unknown
            self.ended = True
        return self.returncode

    def kill(self) -> None:
        """SIGKILL the worker's process group (what its function started dies with it).

        Only while the zygote has not reported it reaped: until then its pid, which is its
        group's id, cannot be anyone else's. The zygote kills the group again when it reaps.
        """
        if self.ended:
            return
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass  # the group is gone already

    async def aclose(self) -> None:
        """Stop it if it still runs, wait until it is reaped, and close its sockets."""
        self.kill()
        with anyio.CancelScope(shield=True):
            await self.channel.aclose()
            await self.wait()
            await self._status_stream.aclose()


class _Zygote:
    def __init__(self, control: socket.socket, pid: int) -> None:
        self.control = control
        self.pid = pid  # a child of this process: reaped when it is replaced

    def request(self, message: bytes, fds: list[int]) -> None:
        sent = socket.send_fds(self.control, [message], fds)
        if sent < len(message):  # the descriptors went with the first part
            self.control.sendall(message[sent:])

    def close(self) -> None:
        self.control.close()
        try:
            os.waitpid(self.pid, os.WNOHANG)  # it ends on the closed socket; reap it if so
        except ChildProcessError:
            pass


_lock = threading.Lock()
_zygote: _Zygote | None = None


def _forget_in_child() -> None:
    """A fork of the client (multiprocessing, the user's own) does not share its zygote."""
    global _zygote, _lock
    _lock = threading.Lock()
    if _zygote is not None:
        try:
            _zygote.control.close()  # the child's copy only: the client keeps its own
        except OSError:
            pass
        _zygote = None


def _close_at_exit() -> None:
    """Close the control socket before the interpreter's end (the zygote ends with it), not
    leave it to the garbage collector, which warns of an unclosed socket."""
    global _zygote
    if _zygote is not None:
        _zygote.close()
        _zygote = None


os.register_at_fork(after_in_child=_forget_in_child)
atexit.register(_close_at_exit)


def _mode() -> str:
    mode = os.environ.get(ZYGOTE_MODE_VARIABLE, "auto")
    return mode if mode in ("auto", "fork", "exec") else "auto"


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as file:
            return int(file.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return sys.maxsize  # unknown: do not fork


def _thread_count() -> int:
    try:
        return len(os.listdir("/proc/self/task"))  # threads Python does not know of too
    except OSError:
        return sys.maxsize


def can_fork() -> bool:
    """Whether forking the zygote from this process is safe now (see the module's docstring)."""
    mode = _mode()
    if mode == "exec" or not sys.platform.startswith("linux"):
        return False
    if mode == "fork":
        return True
    return threading.active_count() == 1 and _thread_count() == 1 and _rss_bytes() <= FORK_MAX_RSS


def _fork_zygote(theirs: socket.socket) -> int:
    # Frozen before the fork: the child's garbage collector must never finalize the client's
    # objects (a file would close a descriptor number that may be another's by then).
    gc.freeze()
    try:
        pid = os.fork()
    except BaseException:
        gc.unfreeze()
        raise
    if pid != 0:
        gc.unfreeze()  # the client collects as ever
        return pid
    # The zygote: nothing of the client's but the control socket and the standard streams.
    code = 1
    try:
        fd = theirs.fileno()
        os.closerange(3, fd)
        os.closerange(fd + 1, os.sysconf("SC_OPEN_MAX"))
        null = os.open(os.devnull, os.O_RDWR)
        os.dup2(null, 0)
        os.dup2(null, 1)
        os.close(null)
        for number in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(number, signal.SIG_DFL)
        code = _worker.zygote(fd)
    finally:
        os._exit(code)


def _exec_zygote(theirs: socket.socket) -> int:
    null = os.devnull
    return os.posix_spawn(
        sys.executable,
        [sys.executable, WORKER_PATH, "--zygote", "3"],
        dict(os.environ),
        file_actions=[
            (os.POSIX_SPAWN_DUP2, theirs.fileno(), 3),  # dup2 leaves it inheritable
            (os.POSIX_SPAWN_OPEN, 0, null, os.O_RDONLY, 0),
            (os.POSIX_SPAWN_OPEN, 1, null, os.O_WRONLY, 0),
        ],
        setsid=True,
    )


def _start() -> _Zygote:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        pid = _fork_zygote(theirs) if can_fork() else _exec_zygote(theirs)
    except BaseException:
        ours.close()
        raise
    finally:
        theirs.close()
    return _Zygote(ours, pid)


def prestart() -> None:
    """Start this process's zygote now, if it has none: knots call it in their constructor,
    before the client has threads (then it is forked, and ready at once)."""
    global _zygote
    with _lock:
        if _zygote is None:
            _zygote = _start()


def _send(message: bytes, fds: list[int]) -> None:
    """Hand a request to the zygote, starting a new one if it is gone."""
    global _zygote
    with _lock:
        for attempt in range(2):
            if _zygote is None:
                _zygote = _start()
            try:
                _zygote.request(message, fds)
                return
            except OSError as error:
                _zygote.close()
                _zygote = None
                if attempt:
                    raise WorkerStartError(
                        f"the worker zygote is gone and could not be restarted: {error}"
                    ) from error


def discard(dead: int) -> None:
    """Forget the zygote if it is ``dead`` (a pid): the next request starts a new one."""
    global _zygote
    with _lock:
        if _zygote is not None and _zygote.pid == dead:
            _zygote.close()
            _zygote = None


async def start_worker(progress_path: str, capture_path: str) -> WorkerProcess:
    """A new worker process, serving chunks on its channel (`aioknot._worker.serve`).

    It runs in this process's current directory and environment, and writes to its stderr,
    as a subprocess started now would.
    """
    request = _worker.request_bytes(
        {
            "progress": progress_path,
            "capture": capture_path,
            "cwd": os.getcwd(),
            "environment": dict(os.environ),
            "client": os.getpid(),  # what the worker watches: it ends when this process does
        }
    )
    for attempt in range(2):
        channel, worker_channel = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        status, worker_status = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            _send(request, [worker_channel.fileno(), worker_status.fileno(), 2])
        except BaseException:
            for end in (channel, status):
                end.close()
            raise
        finally:
            worker_channel.close()
            worker_status.close()
        zygote = _zygote
        channel_stream = _SocketStream(channel)
        status_stream = _SocketStream(status)
        status_lines = BufferedByteReceiveStream(status_stream)
        try:
            line = await status_lines.receive_until(b"\n", 64)
        except (anyio.EndOfStream, anyio.IncompleteRead, anyio.BrokenResourceError):
            # The zygote died with the request (it was killed, or could not fork).
            await channel_stream.aclose()
            await status_stream.aclose()
            if zygote is not None:
                discard(zygote.pid)
            if attempt:
                raise WorkerStartError("the worker zygote died while starting a worker") from None
            continue
        except BaseException:
            await channel_stream.aclose()
            await status_stream.aclose()
            raise
        kind, _, value = line.decode().rstrip("\n").partition(" ")  # "pid <pid>" or "error ..."
        if kind != "pid":
            await channel_stream.aclose()
            await status_stream.aclose()
            raise WorkerStartError(f"a worker process could not be started: {value}")
        return WorkerProcess(int(value), channel_stream, status_lines, status_stream)
    raise AssertionError("unreachable")
