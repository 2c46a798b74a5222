# -*- coding: utf-8 -*-
"""Attacks on the runner's promise (no COMMAND on two nodes at once; each slot runs once) that the obvious tests
do not make: both halves of the kill path killed, a connection reset
timed on a run-record write.

Overlap is measured from the commands' own clocks: each COMMAND (the ticker of tests/overlap.py) appends
``TIME PID TAG`` to a file every 20 ms, and ``max(old holder's ticks) - min(new holder's ticks)`` must be negative.
"""

import json
import os
import signal
import time

import pytest

from overlap import Ticker, kill_tickers, overlap_of, pids_of, ticks, wait_first_tick
from tcpproxy import RequestProxy
from zkharness import pids_with_mark, wait_for

SESSION_TIMEOUT = 3.0


@pytest.fixture(scope="module")
def ticker(tmp_path_factory):
    return Ticker(tmp_path_factory.mktemp("ticker"))


def _guardians(mark):
    """The guardians among the test's processes (they carry the test's mark, and name themselves zl-guardian)."""
    found = []
    for pid in pids_with_mark(mark):
        try:
            with open("/proc/%d/comm" % pid) as f:
                if f.read().strip() == "zl-guardian":
                    found.append(pid)
        except OSError:
            pass
    return found


def _cmdline(pid):
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            return f.read().replace(b"\0", b" ").decode("utf-8", "replace")
    except OSError:
        return ""


def _start_holder(runner, ticker, fa):
    holder = runner.start("job", ticker(fa, duration=60), "--session-timeout", SESSION_TIMEOUT)
    wait_first_tick(fa, timeout=15)
    return holder


def _start_waiter(runner, ticker, fb):
    waiter = runner.start("job", ticker(fb, duration=1), "--session-timeout", SESSION_TIMEOUT, "--wait", 30)
    wait_for(lambda: "waiting" in waiter.stderr, 15, message="the second runner to wait")
    return waiter


def _overlap_once_the_waiter_ran(waiter, fa, fb, what):
    """The overlap, once the waiter got the lock and its COMMAND ran (and the killed holder's would have ticked)."""
    assert waiter.wait(30).returncode == 0, waiter.stderr
    time.sleep(0.3)
    return overlap_of(fa, fb, what)


# --- both halves of the kill path killed -------------------------------------------------------------------


def test_pkill_full_command_line_leaves_no_command_running(runner, ticker):
    """`pkill -KILL -f zoo-locked` (here: the same signals, sent only to this test's processes).

    Before the fix the guardian had the runner's command line, so `pkill -f` killed the runner and the guardian
    together, and COMMAND ran on, unlocked, while the next holder started once the session expired: overlap
    +3.0 s, for good. Now the guardian is a fresh interpreter whose command line does not name zoo-locked.
    """
    fa, fb = runner.path("a"), runner.path("b")
    holder = _start_holder(runner, ticker, fa)
    waiter = _start_waiter(runner, ticker, fb)
    try:
        # The waiter (and its guardian, which has its command line) stands for another node: spared.
        spared = _cmdline(waiter.pid)
        matched = [pid for pid in pids_with_mark(runner.mark)
                   if "zoo-locked" in _cmdline(pid) and _cmdline(pid) != spared]
        assert holder.pid in matched
        for pid in matched:
            os.kill(pid, signal.SIGKILL)
        overlap = _overlap_once_the_waiter_ran(waiter, fa, fb, "pkill -KILL -f zoo-locked")
        assert overlap < 0, "the killed runner's COMMAND ticked %.3f s after the next holder's started" % overlap
    finally:
        kill_tickers(fa, fb)


def test_guardian_killed_then_runner_killed_leaves_no_command_running(runner, ticker):
    """kill -KILL of the guardian, then (1 s later) of the runner. Before the fix the runner never noticed that its
    dead-man switch was gone (Guardian.send swallowed EPIPE), so nothing stopped COMMAND: overlap +3.0 s, unbounded.
    Now the runner stops COMMAND as soon as a renewal finds the guardian's pipe closed (exit 70)."""
    fa, fb = runner.path("a"), runner.path("b")
    holder = _start_holder(runner, ticker, fa)
    [guardian] = wait_for(lambda: _guardians(runner.mark), 5, message="the holder's guardian")  # the holder's: the waiter is not started yet
    waiter = _start_waiter(runner, ticker, fb)
    try:
        os.kill(guardian, signal.SIGKILL)
        time.sleep(1.0)
        holder.kill()
        overlap = _overlap_once_the_waiter_ran(waiter, fa, fb, "guardian, then runner killed")
        assert overlap < 0, "the killed runner's COMMAND ticked %.3f s after the next holder's started" % overlap
    finally:
        kill_tickers(fa, fb)


# --- a connection reset timed on a run-record write --------------------------------------------------------

MULTI = 14  # ZooKeeper's opcode of a transaction: the run-record writes are the only ones the runner sends


@pytest.mark.parametrize("nth, after", [(1, False), (1, True), (2, False), (2, True)],
                         ids=["running-lost", "running-landed", "final-lost", "final-landed"])
def test_connection_reset_during_a_record_write(runner, zk, ticker, nth, after):
    """One TCP reset while the runner writes its run record (1: `running`, 2: the outcome), ZooKeeper healthy.

    docs/architecture.md: "the runner waits for the connection to come back in the same session, reads the record
    again after a sync and compares it with what it wrote, and writes again only if it did not land". But
    Records.write compares kazoo's ``client_id`` at once, and kazoo returns None for it while it reconnects, so
    every ConnectionLoss is taken for a new session: the write gives up at once. On the outcome the record stays
    `running`, the next runner marks the successful attempt `died` and runs the slot a second time; on `running`
    the runner exits 69 and does not run the slot at all.
    """
    fa, fb = runner.path("a"), runner.path("b")
    proxy = RequestProxy(zk.port, MULTI, nth=nth, when="after" if after else "before")
    try:
        first = runner.run("job", ticker(fa, duration=0.5), "--session-timeout", SESSION_TIMEOUT,
                           "--slot", "s1", hosts=proxy.hosts, timeout=30)
        assert proxy.fired is not None, "the proxy never saw transaction %d" % nth
        second = runner.run("job", ticker(fb, duration=0.5), "--session-timeout", SESSION_TIMEOUT,
                            "--slot", "s1", timeout=30)
        history = runner.raw(["history", "job", "--json"] + runner.conn())
        runs = json.loads(history.stdout)["runs"]
        assert first.returncode == 0, first
        assert not ticks(fb), "the slot ran twice: %s\n%s" % (runs, second.stderr)
        assert len(pids_of(fa)) == 1
        [run] = runs
        assert run["state"] == "succeeded", run
        assert [a["state"] for a in run["attempts"]] == ["succeeded"], run
    finally:
        proxy.close()
