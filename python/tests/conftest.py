"""Helpers of the smem pytest suite: free loopback ports and rank processes (spawn) that are
always joined or killed, with results reported through a queue."""

import multiprocessing as mp
import os
import socket
import sys
import traceback

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

#: Seconds a whole multi-process test may take (a loaded 2-core machine is slow to spawn).
DEADLINE_S = float(os.environ.get("SMEM_PYTEST_DEADLINE_S", "90"))


def free_port():
    """A TCP port of 127.0.0.1 that was free a moment ago (bound with port 0, then closed)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_processes(targets, deadline_s=DEADLINE_S):
    """Runs `targets` (a list of (function, args)) in spawned processes; each function gets
    a result queue as its last argument and must put (index, None) on success or
    (index, traceback text) on failure. Returns the results by index; every process is
    joined, or killed when it outlives the deadline, also when this raises."""
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=f, args=(*args, q), daemon=True) for f, args in targets]
    results = {}
    try:
        for p in procs:
            p.start()
        import queue
        import time

        end = time.monotonic() + deadline_s
        while len(results) < len(procs):
            left = end - time.monotonic()
            if left <= 0:
                break
            try:
                i, err = q.get(timeout=min(left, 1.0))
                results[i] = err
            except queue.Empty:
                dead = [j for j, p in enumerate(procs) if p.exitcode not in (None, 0) and j not in results]
                if dead:
                    for j in dead:
                        results[j] = f"process {j} died with exit code {procs[j].exitcode} before reporting"
        for p in procs:
            p.join(timeout=max(1.0, end - time.monotonic()))
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join(5)
    missing = [i for i in range(len(procs)) if i not in results]
    failures = {i: e for i, e in results.items() if e is not None}
    msg = "".join(f"\n--- process {i} ---\n{e}" for i, e in sorted(failures.items()))
    if missing:
        msg += f"\nprocesses {missing} did not report within {deadline_s:.0f}s (killed)"
    assert not failures and not missing, msg
    return results


def report(index, q, body):
    """Runs `body()` in a child and reports the outcome for `run_processes`."""
    try:
        body()
        q.put((index, None))
    except BaseException:  # noqa: BLE001 - the parent prints it
        q.put((index, traceback.format_exc()))


@pytest.fixture
def port():
    return free_port()
