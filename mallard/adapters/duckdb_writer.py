"""The replica's DuckDB database, owned by a writer process of its own.

Why a process: DuckDB's Python client takes the GIL around every statement and again
after every task of a query. Under a backlog the applier's decoding thread holds the
GIL, so in the applier's process each of those waits for it. The writer process has a
GIL of its own that nothing else wants: a batch is sent to it as one message (its SQL
script and its Arrow tables' buffers) and the applier's thread waits once, in a
socket read that lets the GIL go.

The parent holds proxies (``WriterConnection``) that speak for connections of the
writer: the writer's own connection and cursors of it (``cursor()``: a connection of
its own, for another thread). Each proxy is a socket of its own; the writer serves each
in a thread. Every read and write of the replica goes through the writer: it is the
only process that opens the file.

Crash semantics: a request returns once the writer has done it (a batch: once DuckDB
committed it). The writer's death surfaces as ``WriterDied`` on every call after it,
never as a silent loss; the parent's death closes the writer's control socket, and the
writer exits at once (leaving the file to the next applier).

Writers are forked by multiprocessing's fork server, which has imported DuckDB and
pyarrow once: a new replica costs a fork, not an interpreter's start (tests open hundreds).

Public APIs only: multiprocessing, sockets (file descriptors passed with
``socket.send_fds``), pickle (protocol 5: Arrow buffers travel out of band, as they are).
"""
from __future__ import annotations

import atexit
import itertools
import logging
import multiprocessing
import multiprocessing.util  # its exit handler joins children: ours must run before it
import os
import pickle
import signal
import socket
import struct
import threading
import time
import weakref
from typing import Any, Iterable, Sequence

import duckdb
import pyarrow as pa

from mallard.core.replica_sql import Script

log = logging.getLogger("mallard.duckdb")

_LEN = struct.Struct("!Q")
LOCK_WAIT_S = 10.0
"""How long the writer waits for the file's lock: a writer whose parent was killed may
still be exiting when the restarted applier opens the file."""


class WriterDied(RuntimeError):
    """The writer process is gone: what was not answered may not have been done (a batch
    either committed or not; the offsets past it were not committed)."""


# -- framing ---------------------------------------------------------------------------
# A message: its sizes, a pickled header, then the Arrow tables' own buffers (pickle's
# out-of-band buffers: no copy, no encoding). Each side sends one message and waits for
# the other's: a small message is one system call each way, and so one wait for the GIL.

_IOV_MAX = 512


def _send(sock: socket.socket, header: Any, tables: Sequence[pa.Table] = ()) -> None:
    buffers: list[pickle.PickleBuffer] = []
    head = pickle.dumps((header, list(tables)), protocol=5, buffer_callback=buffers.append)
    raws = [b.raw() for b in buffers]
    prefix = _LEN.pack(len(head)) + _LEN.pack(len(raws)) + b"".join(_LEN.pack(r.nbytes) for r in raws)
    parts = [memoryview(prefix), memoryview(head), *raws]
    while parts:
        sent = sock.sendmsg(parts[:_IOV_MAX])
        while parts and sent >= parts[0].nbytes:
            sent -= parts[0].nbytes
            parts.pop(0)
        if parts and sent:
            parts[0] = parts[0][sent:]


def _recv(sock: socket.socket) -> tuple[Any, list[pa.Table]]:
    first = sock.recv(1 << 16)
    if not first:
        raise EOFError
    pending = memoryview(first)

    def fill(view: memoryview) -> None:
        nonlocal pending
        k = min(pending.nbytes, view.nbytes)
        view[:k] = pending[:k]
        pending = pending[k:]
        while k < view.nbytes:
            n = sock.recv_into(view[k:])
            if not n:
                raise EOFError
            k += n

    sizes = bytearray(2 * _LEN.size)
    fill(memoryview(sizes))
    head_size, count = struct.unpack("!QQ", sizes)
    sizes = bytearray(count * _LEN.size)
    fill(memoryview(sizes))
    head = bytearray(head_size)
    fill(memoryview(head))
    buffers = []
    for size in struct.unpack(f"!{count}Q", sizes):
        buffer = pa.allocate_buffer(size)  # aligned as Arrow wants it
        fill(memoryview(buffer).cast("B"))
        buffers.append(buffer)
    return pickle.loads(head, buffers=buffers)


# -- the parent's side -----------------------------------------------------------------

_running: weakref.WeakSet = weakref.WeakSet()


@atexit.register  # before multiprocessing's own exit handler (registered earlier) joins them
def _stop_all() -> None:
    for writer in list(_running):
        writer.stop()


class _Writer:
    """The writer process and its control socket (new channels, interrupts)."""

    def __init__(self, path: str):
        control, theirs = socket.socketpair()
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload([__name__])
        self.proc = context.Process(target=main, args=(theirs,), name="duckdb-writer")
        self.proc.start()
        theirs.close()
        self.control = control
        self.lock = threading.Lock()
        self.ids = itertools.count()
        self.dead: str | None = None
        self.closing = False
        self.exited = threading.Event()
        _running.add(self)
        threading.Thread(target=self._watch, name="duckdb-writer-watch", daemon=True).start()

    def _watch(self) -> None:
        self.proc.join()  # the only thread that waits for it
        self.dead = f"the DuckDB writer process exited ({self.proc.exitcode})"
        self.exited.set()
        if not self.closing:
            log.error("%s: the replica cannot be read or written until the applier restarts", self.dead)

    def channel(self, kind: str, arg: Any = None) -> tuple[int, socket.socket]:
        """A new socket to the writer, served there by a connection of its own."""
        ours, theirs = socket.socketpair()
        channel_id = next(self.ids)
        try:
            with self.lock:
                socket.send_fds(self.control, [pickle.dumps((kind, channel_id, arg))], [theirs.fileno()])
        except OSError as e:
            ours.close()
            raise WriterDied(self.dead or f"the DuckDB writer process is gone: {e}") from None
        finally:
            theirs.close()
        return channel_id, ours

    def interrupt(self, channel_id: int) -> None:
        try:
            with self.lock:
                socket.send_fds(self.control, [pickle.dumps(("interrupt", channel_id, None))], [])
        except OSError:
            pass  # gone: nothing runs there

    def stop(self) -> None:
        self.closing = True
        _running.discard(self)
        try:
            self.control.shutdown(socket.SHUT_RDWR)  # the writer exits when its control socket closes
        except OSError:
            pass
        self.control.close()
        if not self.exited.wait(60):
            self.proc.kill()
            self.exited.wait(10)


def _raise(error: tuple[str, str]) -> None:
    name, message = error
    cls = getattr(duckdb, name, None)
    if not (isinstance(cls, type) and issubclass(cls, duckdb.Error)):
        cls = duckdb.Error
    raise cls(message)


class WriterConnection:
    """Speaks for one connection of the writer: the subset of DuckDB's Python client the
    replica uses (``execute`` then ``fetch*``, ``register``), plus ``run_transaction``."""

    def __init__(self, writer: _Writer, channel_id: int, sock: socket.socket):
        self._writer, self._id, self._sock = writer, channel_id, sock
        self._lock = threading.Lock()
        self._broken: WriterDied | None = None
        self.description: list[tuple] | None = None

    def _call(self, header: tuple, tables: Sequence[pa.Table] = ()) -> Any:
        with self._lock:
            if self._broken is not None:
                raise self._broken
            if self._sock is None:
                raise duckdb.ConnectionException("Connection already closed!")
            try:
                _send(self._sock, header, tables)
                (status, value), _ = _recv(self._sock)
            except BaseException as e:  # a request without its answer: the socket is out of step
                self._broken = WriterDied(self._writer.dead or f"the DuckDB writer process is gone ({e!r})")
                if isinstance(e, (OSError, EOFError)):
                    raise self._broken from None
                raise
        if status == "error":
            _raise(value)
        return value

    def execute(self, sql: str, parameters: Any = None) -> WriterConnection:
        self.description = self._call(("execute", sql, parameters))
        return self

    def fetchone(self) -> tuple | None:
        return self._call(("fetchone",))

    def fetchall(self) -> list[tuple]:
        return self._call(("fetchall",))

    def fetchmany(self, size: int = 1) -> list[tuple]:
        return self._call(("fetchmany", size))

    def register(self, name: str, table: pa.Table) -> None:
        self._call(("register", name), [table])

    def unregister(self, name: str) -> None:
        self._call(("unregister", name))

    def run_transaction(self, statements: Sequence[str], scans: Sequence[tuple[str, pa.Table]]) -> None:
        """``statements`` in one DuckDB transaction, each of ``scans`` a view they read:
        one round trip. Returns once DuckDB committed; a failure rolled it back whole."""
        self._call(("transaction", list(statements), [name for name, _ in scans]), [t for _, t in scans])

    def run_transaction_in_chunks(self, scripts: Iterable[Script]) -> None:
        """Each of ``scripts`` (statements and the Arrow tables they read) in turn, all in one
        DuckDB transaction: a message per script, so neither side ever holds the whole of a
        large transaction. Returns once DuckDB committed; a failure (or an exception from
        ``scripts``) rolled it back whole. A crash of either process commits nothing."""
        self._call(("begin",))
        try:
            for script in scripts:
                self._call(("chunk", script.statements, [name for name, _ in script.scans]),
                           [t for _, t in script.scans])
            self._call(("commit",))
        except BaseException:
            if self._broken is None:
                try:
                    self._call(("rollback",))
                except Exception:  # noqa: BLE001 - the first error is the one to report
                    pass
            raise

    def cursor(self) -> WriterConnection:
        """A connection of its own (DuckDB's ``cursor``), served beside this one."""
        channel_id, sock = self._writer.channel("cursor", self._id)
        return WriterConnection(self._writer, channel_id, sock)

    def interrupt(self) -> None:
        """Stop what this connection runs (from another thread)."""
        self._writer.interrupt(self._id)

    def close(self) -> None:
        with self._lock:
            sock, self._sock = self._sock, None
        if sock is None:
            return
        try:
            _send(sock, ("close",))
            _recv(sock)
        except (OSError, EOFError):
            pass  # gone already
        finally:
            sock.close()
        if self._id == 0:  # the writer's own connection: the process goes with it
            self._writer.stop()


def connect(path: str) -> WriterConnection:
    """A writer process that opens ``path`` (or ``:memory:``); its own connection."""
    writer = _Writer(path)
    channel_id, sock = writer.channel("open", path)
    con = WriterConnection(writer, channel_id, sock)
    try:
        con._call(("opened",))
    except BaseException:
        con._sock = None
        sock.close()
        writer.stop()
        raise
    return con


# -- the writer's side -----------------------------------------------------------------

def _open(path: str) -> duckdb.DuckDBPyConnection:
    deadline = time.monotonic() + LOCK_WAIT_S
    while True:
        try:
            return duckdb.connect(path)
        except duckdb.IOException as e:
            if "lock" not in str(e).lower() or time.monotonic() > deadline:
                raise
            time.sleep(0.1)


class _Served:
    def __init__(self) -> None:
        self.cursors: dict[int, duckdb.DuckDBPyConnection] = {}
        self.main: duckdb.DuckDBPyConnection | None = None
        self.lock = threading.Lock()

    def serve(self, channel_id: int, sock: socket.socket, opener) -> None:
        """One channel: requests in order, each answered ('ok', value) or ('error', (type, message))."""
        con = None
        try:
            while True:
                try:
                    header, tables = _recv(sock)
                except (OSError, EOFError):
                    return
                op = header[0]
                try:
                    if con is None:
                        con = opener()
                        with self.lock:
                            self.cursors[channel_id] = con
                    value = _do(con, op, header, tables)
                    reply = ("ok", value)
                except Exception as e:  # noqa: BLE001 - every error goes back to the caller
                    reply = ("error", (type(e).__name__, str(e)))
                try:
                    _send(sock, reply)
                except OSError:
                    return
                if op == "close":
                    return
        finally:
            with self.lock:
                self.cursors.pop(channel_id, None)
            if con is not None:
                con.close()
            sock.close()

    def interrupt(self, channel_id: int) -> None:
        with self.lock:
            con = self.cursors.get(channel_id)
        if con is not None:
            try:
                con.interrupt()
            except duckdb.Error:
                pass  # closed meanwhile


def _do(con: duckdb.DuckDBPyConnection, op: str, header: tuple, tables: list[pa.Table]) -> Any:
    if op == "execute":
        result = con.execute(header[1], header[2]) if header[2] is not None else con.execute(header[1])
        description = result.description
        return None if description is None else [(d[0], str(d[1]), None, None, None, None, None) for d in description]
    if op == "fetchone":
        return con.fetchone()
    if op == "fetchall":
        return con.fetchall()
    if op == "fetchmany":
        return con.fetchmany(header[1])
    if op == "register":
        con.register(header[1], tables[0])
        return None
    if op == "unregister":
        con.unregister(header[1])
        return None
    if op == "transaction":
        names = header[2]
        for name, table in zip(names, tables):  # each read once (Script.scan): a stream will do
            con.register(name, table.to_reader())
        try:
            con.execute("BEGIN TRANSACTION")
            try:  # one script, as DuckDB parses and runs a batch fastest
                con.execute(";\n".join([*header[1], "COMMIT"]))
            except BaseException:
                try:
                    con.execute("ROLLBACK")
                except duckdb.Error:
                    pass  # a failed COMMIT has rolled back already
                raise
        finally:
            for name in names:
                con.unregister(name)
        return None
    if op == "begin":
        con.execute("BEGIN TRANSACTION")
        return None
    if op == "chunk":  # inside the transaction "begin" opened: the parent rolls back on failure
        names = header[2]
        for name, table in zip(names, tables):
            con.register(name, table.to_reader())
        try:
            con.execute(";\n".join(header[1]))
        finally:
            for name in names:
                con.unregister(name)
        return None
    if op == "commit":  # a failed COMMIT has rolled back
        con.execute("COMMIT")
        return None
    if op == "rollback":
        try:
            con.execute("ROLLBACK")
        except duckdb.Error:
            pass  # nothing was open any more
        return None
    if op == "close":  # before the answer: the parent then finds the file closed
        con.close()
        return None
    if op == "opened":
        return None
    raise ValueError(f"unknown request {op!r}")


def main(control: socket.socket) -> None:
    # It lives as long as its parent's control socket: signals meant for the applier
    # (Ctrl-C, a stop to its process group) are the parent's to handle, and it closes this process.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    served = _Served()
    while True:
        try:
            message, fds, _, _ = socket.recv_fds(control, 4096, 1)
        except OSError:
            message, fds = b"", []
        if not message:  # the parent closed it, or died
            break
        kind, channel_id, arg = pickle.loads(message)
        if kind == "interrupt":
            served.interrupt(channel_id)
            continue
        sock = socket.socket(fileno=fds[0])
        if kind == "open":
            def opener(path=arg):
                served.main = _open(path)
                return served.main
        else:  # a cursor of the writer's own connection
            def opener(parent=arg):
                with served.lock:
                    return served.cursors[parent].cursor()
        threading.Thread(target=served.serve, args=(channel_id, sock, opener), daemon=True).start()
    # The parent closed it (after closing its connections: the file is closed and
    # checkpointed) or died: exit at once either way (DuckDB recovers from its WAL, as
    # after any crash) and leave the file to the next applier.
    os._exit(0)


# -- a batch's script, on a connection of its own ------------------------------------------


class ScriptRunner:
    """Runs a ``Script`` as one DuckDB transaction in the writer process, on a cursor of
    its own (the replica's other connection stays free meanwhile): one message out, one
    wait for the answer, once DuckDB committed."""

    apart = True
    """Scripts run on a connection of their own: the applier's lock is not needed for them."""

    def __init__(self, con: WriterConnection, path: str):
        self.path = path
        self.batches = con.cursor()

    def run(self, script: Script) -> None:
        self.batches.run_transaction(script.statements, script.scans)

    def run_chunks(self, scripts: Iterable[Script]) -> None:
        """Scripts in one DuckDB transaction, one message each (a large transaction's chunks)."""
        self.batches.run_transaction_in_chunks(scripts)

    def close(self) -> None:
        self.batches.close()
