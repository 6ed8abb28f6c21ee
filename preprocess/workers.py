"""Forked worker processes whose death is noticed: a killed worker fails the run fast, with the cause.

`multiprocessing.Pool` replaces a worker that died (the OOM killer's SIGKILL, a SIGBUS) and waits forever for the
task it held. Here the parent polls its workers' exit codes while it waits for results, and a worker that died
stops the run with `WorkerDied("worker pid 123 was killed by signal 9 (SIGKILL): out of memory? ...")`. Whatever
was recorded stays recorded, so the same command resumes.

A task's handler is a generator: it may send several results for one task (a worker streaming a whole archive
sends one per chunk). Tasks come from iterables, each consumed by a feeder thread into one bounded queue, so a
task source that reads data (the parent streaming an archive to the workers) runs ahead of them by a few tasks.
Workers die with the parent (PR_SET_PDEATHSIG), ignore Ctrl-C (the parent handles it and stops them), and the
parent's heap is frozen for the garbage collector before forking so that workers do not copy it page by page.
"""
from __future__ import annotations

import ctypes
import gc
import multiprocessing as mp
import queue
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator

POLL_S = 0.5
HINTS = {signal.SIGKILL: "out of memory? (the kernel's OOM killer sends SIGKILL: see `dmesg`)",
         signal.SIGBUS: "a file changed or a disk filled under it?", signal.SIGSEGV: "a crash in a decoder"}


class WorkerDied(RuntimeError):
    """A worker process died or failed; the message says how."""


def describe(pid: int, exitcode: int) -> str:
    if exitcode < 0:
        sig = signal.Signals(-exitcode)
        hint = HINTS.get(sig, "killed from outside?")
        return f"worker pid {pid} was killed by signal {-exitcode} ({sig.name}): {hint}"
    return f"worker pid {pid} exited with code {exitcode}"


def _last_error(result_q) -> str | None:
    """The error message a failed worker sent before exiting, if it is (still) in the queue."""
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        try:
            kind, payload = result_q.get(timeout=0.1)
        except queue.Empty:
            return None
        if kind == "error":
            return f"a worker failed: {payload}"
    return None


def _child_setup() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and stops its workers
    if sys.platform.startswith("linux"):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _worker(conn, tasks, results) -> None:
    _child_setup()
    job = conn.recv()  # (init, init_args, handler), sent once the parent has a plan; None: nothing to do
    conn.close()
    if job is None:
        return
    init, init_args, handler = job
    try:
        init(*init_args)
        while (task := tasks.get()) is not None:
            for result in handler(task):
                results.put(("result", result))
            results.put(("done", None))
    except BaseException as e:  # a bug or an I/O error outside any one image: report it, do not hang
        results.put(("error", f"{type(e).__name__}: {e}"))
        raise SystemExit(1)


class WorkerPool:
    """`workers` forked processes, started early and told what to run later (`run`, once).

    Fork them before the parent loads anything big (a plan of 112,120 rows): a forked child keeps, as its own
    memory, every inherited page that the parent later writes or frees, so workers forked from a small heap stay
    small whatever the parent holds afterwards. One worker (or fewer) runs everything in-process."""

    def __init__(self, workers: int):
        self.workers, self.procs, self.conns = workers, [], []
        if workers <= 1:
            return
        ctx = mp.get_context("fork")
        self.task_q, self.result_q = ctx.Queue(maxsize=2 * workers), ctx.Queue()
        gc.freeze()  # nor does their collector touch (and so copy) the pages they share with the parent
        for _ in range(workers):
            mine, theirs = ctx.Pipe()
            p = ctx.Process(target=_worker, args=(theirs, self.task_q, self.result_q), daemon=True)
            p.start()
            theirs.close()
            self.procs.append(p)
            self.conns.append(mine)
        gc.unfreeze()

    def __enter__(self) -> "WorkerPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        for conn in self.conns:  # workers never given a job: tell them to go
            try:
                conn.send(None)
            except OSError:
                pass
            conn.close()
        self.conns = []
        for p in self.procs:
            p.join(timeout=2)
            if p.is_alive():
                p.terminate()
                p.join(timeout=10)
        if self.procs:
            self.task_q.cancel_join_thread()
            self.result_q.cancel_join_thread()
        self.procs = []

    def run(self, sources: list[Iterable], handler: Callable[[object], Iterator], *, init: Callable,
            init_args: tuple = ()) -> Iterator:
        """Yield every result of `handler(task)` for every task of every source. Each source is consumed by its
        own feeder thread, so sources that read data (archives streamed by the parent) read side by side.

        Raises WorkerDied when a worker dies or fails; KeyboardInterrupt after stopping the workers."""
        if self.workers <= 1:
            init(*init_args)
            for tasks in sources:
                for task in tasks:
                    yield from handler(task)
            return
        for conn in self.conns:
            conn.send((init, init_args, handler))
            conn.close()
        self.conns = []
        try:
            yield from self._results(sources)
        finally:
            self.close()

    def _results(self, sources: list[Iterable]) -> Iterator:
        procs, task_q, result_q = self.procs, self.task_q, self.result_q
        stop, lock = threading.Event(), threading.Lock()
        fed = {"n": 0, "open": len(sources), "error": None}

        def put(item) -> bool:
            while not stop.is_set():
                try:
                    task_q.put(item, timeout=POLL_S)
                    return True
                except queue.Full:
                    continue
            return False

        def feed(tasks) -> None:
            try:
                for task in tasks:
                    if not put(task):
                        return
                    with lock:
                        fed["n"] += 1
            except BaseException as e:  # the task source failed: stop the run with its message
                fed["error"] = e
                return
            with lock:
                fed["open"] -= 1
                last = fed["open"] == 0
            if last:
                for _ in procs:
                    put(None)

        feeders = [threading.Thread(target=feed, args=(t,), daemon=True, name="preprocess-feeder") for t in sources]
        for t in feeders:
            t.start()
        finished, checked = 0, time.monotonic()
        try:
            while fed["open"] > 0 or finished < fed["n"]:
                if fed["error"] is not None:
                    raise fed["error"]
                try:
                    kind, payload = result_q.get(timeout=POLL_S)
                except queue.Empty:
                    kind = None
                if kind is None or time.monotonic() - checked > POLL_S:  # poll exit codes, busy or not
                    checked = time.monotonic()
                    dead = [p for p in procs if p.exitcode not in (None, 0)]
                    if dead:
                        raise WorkerDied(_last_error(result_q) or describe(dead[0].pid, dead[0].exitcode))
                if kind is None:
                    continue
                if kind == "result":
                    yield payload
                elif kind == "done":
                    finished += 1
                else:
                    raise WorkerDied(f"a worker failed: {payload}")
            for p in procs:
                p.join(timeout=30)
        finally:
            stop.set()
            for p in procs:
                if p.is_alive():
                    p.terminate()
            for t in feeders:
                t.join(timeout=5)
