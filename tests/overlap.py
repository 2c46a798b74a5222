# -*- coding: utf-8 -*-
"""What the tests that set two holders of one lock against each other share (tests/runner/test_never_twice.py,
test_read_found.py, test_attacks.py): the ticker COMMAND, whose ticks measure the overlap from the COMMANDs' own
clocks, and the few helpers around it.

The ticker appends ``TIME PID TAG`` to a file every 20 ms (its children and daemons too, with their own tags), so

    overlap = (last tick of the old holder's COMMAND or anything it started) - (first tick of the new holder's)

and the lock's promise is overlap < 0. ``overlap_of`` prints the figures (pytest -s shows them; CI logs them).
"""

import os
import signal
import sys

import pytest

import zkharness
from zkharness import wait_for

TICKER_SOURCE = r'''
"""A COMMAND for the tests (tests/overlap.py): appends "TIME PID TAG" to FILE every 20 ms."""
import argparse, os, signal, subprocess, sys, threading, time

p = argparse.ArgumentParser()
p.add_argument("file")
p.add_argument("--tag", default="main")
p.add_argument("--for", dest="duration", type=float, default=120.0, help="tick this long, then exit")
p.add_argument("--exit", type=int, default=0)
p.add_argument("--ignore-term", action="store_true", help="ignore SIGTERM (only SIGKILL stops it)")
p.add_argument("--child", action="store_true", help="start a child ticker (tag child) in our process group")
p.add_argument("--flood-child", action="store_true",
               help="start a child ticker (tag flood) that also writes to its stderr until that blocks")
p.add_argument("--flood", action="store_true", help="a thread writes to stderr for ever (it blocks when full)")
p.add_argument("--daemon", action="store_true",
               help="fork a daemon (os.setsid: out of our group and session) that ticks (tag daemon)")
p.add_argument("--daemon-for", type=float, default=120.0)
a = p.parse_args()

if a.ignore_term:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
fd = os.open(a.file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)


def tick(tag):
    os.write(fd, b"%.6f %d %s\n" % (time.time(), os.getpid(), tag.encode()))


def tick_for(tag, duration):
    end = time.monotonic() + duration
    due = time.monotonic()
    while True:
        tick(tag)
        due += 0.02
        if due >= end:
            return
        time.sleep(max(0.0, due - time.monotonic()))


def flood():
    chunk = b"x" * 65536
    while True:
        os.write(2, chunk)


def child(tag, *extra):
    return subprocess.Popen([sys.executable, "-I", "-S", os.path.abspath(__file__), a.file, "--tag", tag,
                             "--for", str(a.duration)] + list(extra))


tick(a.tag)  # the first tick: this COMMAND's start
if a.flood:
    threading.Thread(target=flood, daemon=True).start()
if a.child:
    child("child")
if a.flood_child:
    child("flood", "--flood")
if a.daemon:
    r, w = os.pipe()
    if os.fork() == 0:
        os.close(r)
        os.setsid()
        tick("daemon")
        os.write(w, b"!")
        os.close(w)
        tick_for("daemon", a.daemon_for)
        os._exit(0)
    os.close(w)
    os.read(r, 1)  # the daemon runs and has ticked
    os.close(r)
tick_for(a.tag, a.duration)
sys.exit(a.exit)
'''


class Ticker:
    """``ticker(FILE, duration=S, exit=N, tag=T, child=True, ...)``: the command line of a ticker COMMAND that
    writes to FILE; each keyword is one of its options (True: the bare flag; None: left out)."""

    def __init__(self, directory):
        self.script = os.path.join(str(directory), "ticker.py")
        with open(self.script, "w") as f:
            f.write(TICKER_SOURCE)

    def __call__(self, path, duration=None, exit=None, **flags):
        cmd = [sys.executable, "-I", "-S", self.script, str(path)]
        if duration is not None:
            cmd += ["--for", str(duration)]
        if exit is not None:
            cmd += ["--exit", str(exit)]
        for flag, value in flags.items():
            if value is True:
                cmd.append("--" + flag.replace("_", "-"))
            elif value is not None:
                cmd += ["--" + flag.replace("_", "-"), str(value)]
        return cmd


def ticks(path, tags=None):
    """[(time, pid, tag)] of a ticker's file, in order."""
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        return []
    out = []
    for line in lines:
        parts = line.split()
        if len(parts) == 3:  # a line being written is skipped
            t, pid, tag = float(parts[0]), int(parts[1]), parts[2]
            if tags is None or tag in tags:
                out.append((t, pid, tag))
    return out


def first_tick(path, tag="main"):
    found = ticks(path, {tag})
    return found[0] if found else None


def wait_first_tick(path, tag="main", timeout=20):
    return wait_for(lambda: first_tick(path, tag), timeout, interval=0.01, message="a %s tick in %s" % (tag, path))


def last_tick(path):
    found = ticks(path)
    return max(t for t, dummy_pid, dummy_tag in found) if found else None


def pids_of(path, tags=None):
    return sorted({pid for dummy_t, pid, dummy_tag in ticks(path, tags)})


def overlap_of(old_path, new_path, what):
    """Print and return the overlap: the old holder's last tick (anything it started) minus the new one's start."""
    old_last = last_tick(old_path)
    new = ticks(new_path)
    assert old_last is not None, "the old holder's COMMAND never ticked"
    assert new, "the new holder's COMMAND never ran"
    overlap = old_last - new[0][0]
    by_tag = {}
    for t, dummy_pid, tag in ticks(old_path):
        by_tag[tag] = max(by_tag.get(tag, t), t)
    print("\n[%s] overlap %+.3f s (%s): old holder's last tick %s, new holder's COMMAND started at %.3f"
          % (what, overlap, "BOTH RAN AT ONCE" if overlap >= 0 else "never both at once",
             ", ".join("%s %.3f" % kv for kv in sorted(by_tag.items())), new[0][0]))
    return overlap


def kill_tickers(*paths):
    """SIGKILL every process that ticked in these files."""
    for path in paths:
        for pid in pids_of(path):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass


def finish(bg, timeout):
    """bg.wait(timeout), or None when it is still running (nothing raised, so the figures still get printed)."""
    try:
        return bg.wait(timeout)
    except AssertionError:
        return None


def kazoo_client(hosts, timeout=10):
    from kazoo.client import KazooClient

    client = KazooClient(hosts=hosts, timeout=timeout)
    client.start(timeout=20)
    return client


def close_client(client):
    try:
        client.stop()
    finally:
        client.close()


def started_ensemble(request, ens, start):
    """The body of an ensemble fixture (``yield from``): start() the ZKEnsemble ``ens`` (the test fails when it
    cannot), have conftest.py attach its servers' logs to the report of a failed test, yield it, stop it."""
    try:
        modes = start()
    except zkharness.HarnessError as e:
        ens.stop()
        pytest.fail("cannot start the ensemble: %s" % e)
    print("\nensemble modes %s" % modes)
    marks = getattr(request.node, "_zk_log_marks", None)
    if marks is None:
        marks = request.node._zk_log_marks = []
    marks.extend((ens[sid], 0) for sid in sorted(ens.peers))
    yield ens
    ens.stop()
