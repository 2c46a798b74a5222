# -*- coding: utf-8 -*-
"""Attacks on the runner's promise (no COMMAND on two nodes at once; each slot runs once) that the obvious tests
do not make: both halves of the kill path killed, a connection reset
timed on a run-record write.

Overlap is measured from the commands' own clocks: each COMMAND appends ``TAG PID time.time()`` to a file every
20 ms, and ``max(old holder's ticks) - min(new holder's ticks)`` must be negative.
"""

import json
import os
import select
import signal
import socket
import struct
import sys
import threading
import time

import pytest

from zkharness import pids_with_mark, wait_for

SESSION_TIMEOUT = 3.0

TICKER = r'''
import os, sys, time
out, tag, mode, seconds = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])


def tick(tag):
    fd = os.open(out, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    end = time.time() + seconds
    while time.time() < end:
        os.write(fd, ("%s %d %.6f\n" % (tag, os.getpid(), time.time())).encode())
        time.sleep(0.02)
    os._exit(0)


if mode == "plain":
    tick(tag)
'''


@pytest.fixture
def ticker(tmp_path):
    path = tmp_path / "ticker.py"
    path.write_text(TICKER)

    def command(out, tag, mode="plain", seconds=60):
        return [sys.executable, "-I", "-S", str(path), out, tag, mode, str(seconds)]

    return command


def _ticks(path):
    found = {}
    try:
        with open(path) as f:
            for line in f:
                parts = line.split()
                if len(parts) == 3:
                    found.setdefault(parts[0], []).append((int(parts[1]), float(parts[2])))
    except FileNotFoundError:
        pass
    return found


def _overlap(path, old, new):
    t = _ticks(path)
    old_t = [x for k, v in t.items() if k.startswith(old) for dummy, x in v]
    new_t = [x for k, v in t.items() if k.startswith(new) for dummy, x in v]
    assert old_t and new_t, "both holders should have ticked: %s" % sorted(t)
    return max(old_t) - min(new_t)


def _kill_tickers(path):
    for tag, entries in _ticks(path).items():
        for pid in {p for p, dummy in entries}:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass


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


def _holder_and_waiter(runner, ticker, out, name="job", holder_seconds=60):
    holder = runner.start(name, ticker(out, "A", seconds=holder_seconds), "--session-timeout", SESSION_TIMEOUT)
    wait_for(lambda: "A" in _ticks(out), 15, message="the holder's COMMAND to tick")
    waiter = runner.start(name, ticker(out, "B", seconds=1), "--session-timeout", SESSION_TIMEOUT, "--wait", 30)
    wait_for(lambda: "waiting" in waiter.stderr, 15, message="the second runner to wait")
    return holder, waiter


# --- both halves of the kill path killed -------------------------------------------------------------------


def test_pkill_full_command_line_leaves_no_command_running(runner, ticker):
    """`pkill -KILL -f zoo-locked` (here: the same signals, sent only to this test's processes).

    Before the fix the guardian had the runner's command line, so `pkill -f` killed the runner and the guardian
    together, and COMMAND ran on, unlocked, while the next holder started once the session expired: overlap
    +3.0 s, for good. Now the guardian is a fresh interpreter whose command line does not name zoo-locked.
    """
    out = runner.path("ticks")
    holder, waiter = _holder_and_waiter(runner, ticker, out)
    try:
        # The waiter (and its guardian, which has its command line) stands for another node: spared.
        spared = _cmdline(waiter.pid)
        matched = [pid for pid in pids_with_mark(runner.mark)
                   if "zoo-locked" in _cmdline(pid) and _cmdline(pid) != spared]
        assert holder.pid in matched
        for pid in matched:
            os.kill(pid, signal.SIGKILL)
        assert waiter.wait(30).returncode == 0, waiter.stderr
        time.sleep(0.3)
        overlap = _overlap(out, "A", "B")
        assert overlap < 0, "the killed runner's COMMAND ticked %.3f s after the next holder's started" % overlap
    finally:
        _kill_tickers(out)


def test_guardian_killed_then_runner_killed_leaves_no_command_running(runner, ticker):
    """kill -KILL of the guardian, then (1 s later) of the runner. Before the fix the runner never noticed that its
    dead-man switch was gone (Guardian.send swallowed EPIPE), so nothing stopped COMMAND: overlap +3.0 s, unbounded.
    Now the runner stops COMMAND as soon as a renewal finds the guardian's pipe closed (exit 70)."""
    out = runner.path("ticks")
    holder = runner.start("job", ticker(out, "A", seconds=60), "--session-timeout", SESSION_TIMEOUT)
    wait_for(lambda: "A" in _ticks(out), 15, message="the holder's COMMAND to tick")
    [guardian] = _guardians(runner.mark)  # the holder's: the waiter is not started yet
    waiter = runner.start("job", ticker(out, "B", seconds=1), "--session-timeout", SESSION_TIMEOUT, "--wait", 30)
    wait_for(lambda: "waiting" in waiter.stderr, 15, message="the second runner to wait")
    try:
        os.kill(guardian, signal.SIGKILL)
        time.sleep(1.0)
        holder.kill()
        assert waiter.wait(30).returncode == 0, waiter.stderr
        time.sleep(0.3)
        overlap = _overlap(out, "A", "B")
        assert overlap < 0, "the killed runner's COMMAND ticked %.3f s after the next holder's started" % overlap
    finally:
        _kill_tickers(out)


# --- a connection reset timed on a run-record write --------------------------------------------------------

MULTI = 14  # ZooKeeper's opcode of a transaction: the run-record writes are the only ones the runner sends


class ResetOnWrite:
    """A TCP proxy to ZooKeeper that resets the connection at the Nth transaction (multi) a client sends: before
    forwarding it (the write never lands) or just after (it lands, the answer is lost)."""

    def __init__(self, port, nth, after):
        self.target = ("127.0.0.1", port)
        self.nth, self.after = nth, after
        self.seen = 0
        self.fired = None
        self.closed = False
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.listener.settimeout(0.1)
        self.hosts = "127.0.0.1:%d" % self.listener.getsockname()[1]
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.closed:
            try:
                client, dummy = self.listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()

    def _is_target(self, frame):
        if len(frame) < 12 or struct.unpack(">i", frame[8:12])[0] != MULTI:
            return False
        with self.lock:
            self.seen += 1
            if self.seen == self.nth and self.fired is None:
                self.fired = time.time()
                return True
        return False

    def _pump(self, client, upstream):
        pending, handshake = b"", True
        try:
            while not self.closed:
                readable = select.select([client, upstream], [], [], 0.1)[0]
                for s in readable:
                    data = s.recv(65536)
                    if not data:
                        return
                    if s is upstream:
                        client.sendall(data)
                        continue
                    pending += data
                    while len(pending) >= 4:
                        size = struct.unpack(">i", pending[:4])[0]
                        if len(pending) < 4 + size:
                            break
                        frame, pending = pending[:4 + size], pending[4 + size:]
                        if handshake:  # the ConnectRequest has no xid nor opcode
                            handshake = False
                        elif self._is_target(frame):
                            if self.after:
                                upstream.sendall(frame)
                                time.sleep(0.1)  # the server applies it; its answer dies with the connection
                            return
                        upstream.sendall(frame)
        except OSError:
            return
        finally:
            for s in (client, upstream):
                try:
                    s.close()
                except OSError:
                    pass

    def close(self):
        self.closed = True
        self.listener.close()


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
    out = runner.path("ticks")
    proxy = ResetOnWrite(zk.port, nth, after)
    try:
        first = runner.run("job", ticker(out, "A", seconds=0.5), "--session-timeout", SESSION_TIMEOUT,
                           "--slot", "s1", hosts=proxy.hosts, timeout=30)
        assert proxy.fired is not None, "the proxy never saw transaction %d" % nth
        second = runner.run("job", ticker(out, "B", seconds=0.5), "--session-timeout", SESSION_TIMEOUT,
                            "--slot", "s1", timeout=30)
        history = runner.raw(["history", "job", "--json"] + runner.conn())
        runs = json.loads(history.stdout)["runs"]
        ticks = _ticks(out)
        assert first.returncode == 0, first
        assert "B" not in ticks, "the slot ran twice: %s\n%s" % (runs, second.stderr)
        assert len({pid for pid, dummy in ticks.get("A", [])}) == 1
        [run] = runs
        assert run["state"] == "succeeded", run
        assert [a["state"] for a in run["attempts"]] == ["succeeded"], run
    finally:
        proxy.close()
