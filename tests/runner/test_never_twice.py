# -*- coding: utf-8 -*-
"""Never twice (issue 12): the ways the runner was found to run a job on two holders at once, or a slot twice.

Against real ZooKeeper (the shared test server, a freezable proxy in front of it, or a three-server ensemble
from tests/zkensemble.py), no mocks. Every overlap is measured from the COMMANDs' own timestamps: the COMMAND
is a "ticker" (tests/overlap.py) that appends ``TIME PID TAG`` to a file every 20 ms (its children and daemons
too, with their own tags), so

    overlap = (last tick of the old holder's COMMAND or anything it started) - (first tick of the new holder's)

and the lock's promise is overlap < 0. The figures are printed (pytest -s shows them; CI logs them).
"""

import json
import os
import signal
import subprocess
import time

import pytest

import zkharness
from overlap import (
    Ticker, close_client, finish, first_tick, kazoo_client, last_tick, overlap_of, pids_of, started_ensemble,
    wait_first_tick,
)
from zkensemble import ZKEnsemble
from zkharness import group_alive, pid_alive, runner_env, wait_for


# --- helpers -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ticker(tmp_path_factory):
    return Ticker(tmp_path_factory.mktemp("ticker"))


def wait_dead(pids=(), pgids=(), timeout=10.0):
    """Poll (5 ms) until every pid and every process group is gone; the time.time() then, or None on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(pid_alive(p) for p in pids) and not any(group_alive(g) for g in pgids):
            return time.time()
        time.sleep(0.005)
    return None


def queued(runner, client, name, count, root=None, timeout=20):
    wait_for(lambda: len(runner.children(client, name, root=root)) == count, timeout, interval=0.02,
             message="%d contender(s) of %s" % (count, name))


# --- 1. a follower cut off from the leader -------------------------------------------------------------


@pytest.fixture
def ensemble(request, tmp_path):
    # tickTime 500 ms: the runner's bound T >= (tickTime/2 + 0.25 s) / 0.15 is 3.3 s, so a 4 s session is safe.
    # syncLimit 10: the cut-off follower goes on serving reads for 10 ticks (5 s) before it gives up.
    ens = ZKEnsemble(str(tmp_path / "ensemble"), size=3, tick_time=500, init_limit=10, sync_limit=10, proxied={1})
    yield from started_ensemble(request, ens, lambda: ens.start_with_follower(1))


@pytest.mark.timeout(60)
def test_follower_cut_off_from_the_leader(runner, ensemble, ticker):
    """Holder A talks only to server 1, a follower; server 1 loses its link to the leader but keeps serving reads."""
    session_timeout = 4.0
    client = kazoo_client(ensemble.hosts([2, 3]))
    try:
        fa, fb = runner.path("a"), runner.path("b")
        a = runner.start("job", ticker(fa), "--session-timeout", session_timeout, hosts=ensemble.hosts([1]))
        wait_first_tick(fa)
        b = runner.start("job", ticker(fb, duration=1.0), "--wait", 30, "--session-timeout", session_timeout,
                         hosts=ensemble.hosts([2, 3]))
        queued(runner, client, "job", 2)
        assert ensemble[1].mode() == "follower", ensemble.modes()
        cut_at = ensemble.cut_off(1)
        # The trap: cut off from the leader, server 1 still serves its clients (for syncLimit x tickTime).
        time.sleep(1.0)
        assert ensemble[1].mode() == "follower", "server 1 stopped serving at once: %s" % ensemble.modes()

        b_res = finish(b, 35)
        a_res = finish(a, 15)
        a_dead = [p for p in pids_of(fa) if pid_alive(p)]
        overlap = overlap_of(fa, fb, "follower cut off")
        last_a = last_tick(fa)
        print("A's last tick %.3f s after the cut; B started %.3f s after it; A %s; B %s"
              % (last_a - cut_at, first_tick(fb)[0] - cut_at if first_tick(fb) else float("nan"),
                 "exit %s" % a_res.returncode if a_res else "STILL RUNNING", "exit %s" % b_res.returncode if b_res else
                 "STILL RUNNING"))
        assert overlap < 0, "A's COMMAND ran %.3f s after B's started" % overlap
        assert not a_dead, "A's COMMAND %s still runs" % a_dead
        assert a_res is not None and a_res.returncode == 70, a_res or a
        assert "lost" in [e for e, dummy in a_res.log_lines()], a_res
        assert b_res is not None and b_res.returncode == 0, b_res or b
        assert runner.children(client, "job") == []
    finally:
        close_client(client)


# --- 2. the kill path must not block on logging -----------------------------------------------------------


class PipedRunner:
    """A runner whose stderr is a pipe that nobody reads (cron's, with a hung mailer): it fills up."""

    def __init__(self, args, mark):
        self.args = [zkharness.ZOO_LOCKED] + [str(a) for a in args]
        self.proc = subprocess.Popen(self.args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, env=runner_env(None, mark), start_new_session=True)
        self.pid = self.proc.pid
        self.fd = self.proc.stderr.fileno()
        self.drained = b""

    def full(self):
        """True when not even a short log line fits in the pipe any more (a non-blocking write of one fails).

        Tested through a description of our own (/proc/PID/fd/2 opened again, non-blocking), as the runner
        writes its log lines; when something fits, the few bytes written are harmless filler.
        """
        fd = os.open("/proc/%d/fd/2" % self.pid, os.O_WRONLY | os.O_NONBLOCK)
        try:
            os.write(fd, b"x" * 64)
            return False
        except BlockingIOError:
            return True
        finally:
            os.close(fd)

    def drain(self):
        """Read what is in the pipe now (without blocking); keep the runner's own log lines."""
        os.set_blocking(self.fd, False)
        while True:
            try:
                data = os.read(self.fd, 1 << 16)
            except BlockingIOError:
                break
            if not data:
                break
            self.drained += data.replace(b"x", b"")

    def wait_draining(self, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.drain()
            if self.proc.poll() is not None:
                self.drain()
                return self.proc.returncode
            time.sleep(0.02)
        return None

    def log_events(self):
        return [e for e, dummy in zkharness.parse_log(self.drained.decode("utf-8", "replace"))]

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
        try:
            self.wait_draining(5)
        finally:
            self.proc.stderr.close()


@pytest.mark.timeout(60)
def test_kill_path_does_not_block_on_a_full_stderr(runner, zk_server, proxy_factory, kazoo, ticker):
    session_timeout = 4.0
    proxy = proxy_factory(zk_server.port)
    fa, fb = runner.path("a"), runner.path("b")
    # COMMAND ticks; its child ticks too and fills COMMAND's stderr, which is the runner's, until it blocks.
    a = PipedRunner(runner.run_args("job", ticker(fa, flood_child=True),
                                    ["--session-timeout", session_timeout], hosts=proxy.hosts), runner.mark)
    runner.background.append(a)
    wait_first_tick(fa)
    wait_first_tick(fa, "flood")
    wait_for(a.full, 10, interval=0.01, message="the runner's stderr pipe to be full")
    full_since = time.time()
    wait_for(lambda: last_tick(fa) > full_since + 0.1, 5, interval=0.01,
             message="COMMAND to go on ticking with its stderr full")
    b = runner.start("job", ticker(fb, duration=1.0), "--wait", 30, "--session-timeout", session_timeout)
    queued(runner, kazoo, "job", 2)

    frozen_at = proxy.freeze()
    b_res = finish(b, 35)
    # Left alone with its stderr full, the runner must still get to its end.
    deadline = time.monotonic() + 5
    while a.proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    exited_alone = a.proc.poll() is not None
    a_alive = [p for p in pids_of(fa) if pid_alive(p)]
    overlap = overlap_of(fa, fb, "stderr full")
    print("A's last tick %.3f s after the freeze; A's runner %s with its stderr still full; A's COMMAND tree "
          "alive: %s" % (last_tick(fa) - frozen_at, "exited" if exited_alone else "had NOT exited", a_alive))
    a_code = a.wait_draining(10)  # now read the pipe, so that a runner stuck on it can go on
    print("A's runner: exit %s; its log lines: %s" % (a_code, a.log_events()))
    assert overlap < 0, "A's COMMAND ran %.3f s after B's started" % overlap
    assert not a_alive, "A's COMMAND tree %s still runs" % a_alive
    assert b_res is not None and b_res.returncode == 0, b_res or b
    assert exited_alone, "the runner did not get to its end while its stderr pipe was full"
    assert a_code == 70, a_code
    assert runner.children(kazoo, "job") == []


# --- 3. the runner stopped (kill -STOP) -------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_stopped_runner_guardian_kills_the_command(runner, kazoo, ticker):
    session_timeout = 3.0
    stop_for = 9.0
    fa, fb = runner.path("a"), runner.path("b")
    a = runner.start("job", ticker(fa, child=True), "--session-timeout", session_timeout)
    main = wait_first_tick(fa)
    wait_first_tick(fa, "child")
    b = runner.start("job", ticker(fb, duration=1.0), "--wait", 30, "--session-timeout", session_timeout)
    queued(runner, kazoo, "job", 2)

    stopped_at = time.time()
    os.kill(a.pid, signal.SIGSTOP)
    try:
        dead_at = wait_dead(pids_of(fa), [main[1]], timeout=stop_for - 0.5)
        time.sleep(max(0.0, stopped_at + stop_for - time.time()))
    finally:
        os.kill(a.pid, signal.SIGCONT)
    b_res = finish(b, 30)
    a_res = finish(a, 15)
    overlap = overlap_of(fa, fb, "runner stopped")
    print("A's COMMAND dead %s after the SIGSTOP (bound 0.75 x %.1f s = %.2f s after the last heartbeat); A %s"
          % ("%.3f s" % (dead_at - stopped_at) if dead_at else "NOT", session_timeout, 0.75 * session_timeout,
             "exit %s" % a_res.returncode if a_res else "STILL RUNNING"))
    assert overlap < 0, "A's COMMAND ran %.3f s after B's started" % overlap
    assert dead_at is not None, "A's COMMAND outlived %.0f s of its runner stopped" % stop_for
    # The last heartbeat came before the SIGSTOP; 0.1 x more for "about" and a loaded machine.
    assert dead_at - stopped_at <= 0.85 * session_timeout, dead_at - stopped_at
    assert a_res is not None and a_res.returncode == 70, a_res or a
    assert b_res is not None and b_res.returncode == 0, b_res or b
    assert runner.children(kazoo, "job") == []


# --- 4. the runner's process group killed ---------------------------------------------------------------


class _Reaped:
    """A Popen that the runner fixture kills and reaps at teardown."""

    def __init__(self, proc):
        self.proc = proc

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("how", ["timeout-s-KILL", "kill-KILL-pgid"])
def test_runner_group_killed(runner, kazoo, ticker, how):
    session_timeout = 3.0
    fa, fb = runner.path("a"), runner.path("b")
    args = runner.run_args("job", ticker(fa, child=True), ["--session-timeout", session_timeout])
    if how == "timeout-s-KILL":
        # timeout puts itself and the runner in a group of their own, and SIGKILLs the runner (and that group)
        # after 2 s: COMMAND must be running by then.
        top = subprocess.Popen(["timeout", "-s", "KILL", "2", zkharness.ZOO_LOCKED] + args, stdin=subprocess.DEVNULL,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               env=runner_env(None, runner.mark), start_new_session=True)
        runner.background.append(_Reaped(top))
        main = wait_first_tick(fa, timeout=2)
        runner_pid = zkharness.proc_stat(main[1])[1]  # COMMAND's parent
        assert runner_pid != top.pid
    else:
        bg = runner.start("job", ticker(fa, child=True), "--session-timeout", session_timeout)
        main = wait_first_tick(fa)
        runner_pid = bg.pid
    wait_first_tick(fa, "child")
    b = runner.start("job", ticker(fb, duration=1.0), "--wait", 30, "--session-timeout", session_timeout)
    if how == "kill-KILL-pgid":
        queued(runner, kazoo, "job", 2)
        assert os.getpgid(runner_pid) == runner_pid  # the runner's own group (it was started with a new session)
        killed_at = time.time()
        os.killpg(runner_pid, signal.SIGKILL)
    else:
        assert wait_dead([runner_pid], timeout=5), "timeout did not kill the runner"
        killed_at = time.time()  # within 5 ms of the kill
    assert wait_dead([runner_pid], timeout=2)
    dead_at = wait_dead(pids_of(fa), [main[1]], timeout=session_timeout + 3)
    b_res = finish(b, 30)
    overlap = overlap_of(fa, fb, how)
    print("A's COMMAND group dead %s after the kill" % ("%.3f s" % (dead_at - killed_at) if dead_at else "NOT"))
    assert overlap < 0, "A's COMMAND ran %.3f s after B's started" % overlap
    assert dead_at is not None and dead_at - killed_at <= 1.0, "COMMAND and its group outlived the runner"
    assert b_res is not None and b_res.returncode == 0, b_res or b
    if how == "timeout-s-KILL":
        assert top.wait(5) in (-signal.SIGKILL, 128 + signal.SIGKILL), top.returncode
    assert runner.children(kazoo, "job") == []


# --- 5. a daemon escapes the process group ----------------------------------------------------------------


@pytest.mark.timeout(60)
def test_escaped_daemon_dies_before_the_lock_is_released(runner, kazoo, ticker):
    session_timeout = 3.0
    fa, fb = runner.path("a"), runner.path("b")
    # COMMAND forks a daemon (os.setsid: out of its group and session) that ticks on, then exits 0.
    a = runner.start("job", ticker(fa, duration=1.0, exit=0, daemon=True, daemon_for=60),
                     "--session-timeout", session_timeout)
    wait_first_tick(fa)
    daemon = wait_first_tick(fa, "daemon")
    b = runner.start("job", ticker(fb, duration=1.0), "--wait", 30, "--session-timeout", session_timeout)
    queued(runner, kazoo, "job", 2)
    a_res = finish(a, 20)
    daemon_alive_at_exit = pid_alive(daemon[1])
    b_res = finish(b, 30)
    overlap = overlap_of(fa, fb, "setsid daemon, COMMAND exits 0")
    print("A exit %s; the daemon was %s when A's runner exited"
          % (a_res.returncode if a_res else "STILL RUNNING", "ALIVE" if daemon_alive_at_exit else "dead"))
    assert overlap < 0, "A's daemon ran %.3f s after B's COMMAND started" % overlap
    assert a_res is not None and a_res.returncode == 0, a_res or a
    assert not daemon_alive_at_exit, "the runner exited (and released the lock) while COMMAND's daemon ran"
    assert b_res is not None and b_res.returncode == 0, b_res or b
    assert runner.children(kazoo, "job") == []


@pytest.mark.timeout(60)
def test_escaped_daemon_dies_when_the_runner_is_killed(runner, kazoo, ticker):
    session_timeout = 3.0
    fa, fb = runner.path("a"), runner.path("b")
    a = runner.start("job", ticker(fa, daemon=True, daemon_for=60), "--session-timeout", session_timeout)
    main = wait_first_tick(fa)
    daemon = wait_first_tick(fa, "daemon")
    b = runner.start("job", ticker(fb, duration=1.0), "--wait", 30, "--session-timeout", session_timeout)
    queued(runner, kazoo, "job", 2)
    killed_at = time.time()
    a.signal(signal.SIGKILL)
    dead_at = wait_dead([main[1], daemon[1]], [main[1]], timeout=session_timeout + 3)
    b_res = finish(b, 30)
    a_res = finish(a, 5)
    overlap = overlap_of(fa, fb, "setsid daemon, runner SIGKILLed")
    print("A's COMMAND and daemon dead %s after the SIGKILL"
          % ("%.3f s" % (dead_at - killed_at) if dead_at else "NOT"))
    assert overlap < 0, "A's daemon ran %.3f s after B's COMMAND started" % overlap
    assert dead_at is not None and dead_at - killed_at <= 1.0, "COMMAND or its daemon outlived the runner"
    assert a_res is not None and a_res.returncode == -signal.SIGKILL, a_res or a
    assert b_res is not None and b_res.returncode == 0, b_res or b
    assert runner.children(kazoo, "job") == []


# --- 6. a slot's record lost to a connection blip ---------------------------------------------------------


def _history(runner, name):
    result = runner.raw(["history", name, "--json", "--limit", "1000"] + runner.conn())
    assert result.returncode == 0, result
    return json.loads(result.stdout)["runs"]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("blip", ["held-then-dropped", "repeated-drops"])
def test_slot_end_record_survives_a_connection_blip(runner, zk_server, proxy_factory, kazoo, ticker, blip):
    """COMMAND succeeds; the write of its outcome meets a ConnectionLoss. The slot must not run again."""
    session_timeout = 4.0
    proxy = proxy_factory(zk_server.port)
    ready, count = runner.path("ready"), runner.path("count")
    script = "echo ran >> %s; touch %s; sleep 0.05" % (count, ready)
    a = runner.start("job", ["sh", "-c", script], "--slot", "s1", "--session-timeout", session_timeout,
                     hosts=proxy.hosts)
    wait_for(lambda: os.path.exists(ready), 20, interval=0.002, message="COMMAND to start")
    accepted = proxy.accepted
    if blip == "held-then-dropped":
        # What the runner sends from now on is held (COMMAND ends 50 ms from now and the runner writes the
        # outcome), then the connection is dropped: the write is lost in flight, a ConnectionLoss.
        proxy.freeze()
        time.sleep(0.4)
        proxy.drop_connections()
        proxy.thaw()
    else:
        end = time.monotonic() + 0.3
        while time.monotonic() < end:
            proxy.drop_connections()
            time.sleep(0.005)
    a_res = finish(a, 20)
    reconnects = proxy.accepted - accepted
    print("\n[%s] the runner reconnected %d time(s); its events: %s"
          % (blip, reconnects, [(e, f.get("reason", "")[:90]) for e, f in (a_res.log_lines() if a_res else [])]))
    assert a_res is not None, a
    # A blip that heals long before half the session timeout must leave COMMAND alone (it exits 0 by itself).
    assert a_res.returncode == 0, "a %s connection blip of 0.3-0.4 s stopped COMMAND: %s" % (blip, a_res)

    fb = runner.path("b")
    again = runner.run("job", ticker(fb, duration=0.5), "--slot", "s1", "--session-timeout", session_timeout)
    runs = _history(runner, "job")
    ran = len(open(count).read().split())
    print("[%s] COMMAND ran %d time(s); the second run: exit %s, events %s, ran its COMMAND: %s; history: %s"
          % (blip, ran, again.returncode, [e for e, dummy in again.log_lines()], os.path.exists(fb),
             [(r["slot"], r["state"], [x["state"] for x in r["attempts"]]) for r in runs]))
    assert ran == 1
    assert not os.path.exists(fb), "the slot ran a second time: %s" % again
    assert again.returncode == 0, again
    assert "done" in [e for e, dummy in again.log_lines()], again
    [run] = runs
    assert run["slot"] == "s1" and run["state"] == "succeeded", run
    assert [x["state"] for x in run["attempts"]] == ["succeeded"], run
    if blip == "held-then-dropped":
        assert reconnects >= 1, "the blip did not happen"
    wait_for(lambda: runner.children(kazoo, "job") == [], session_timeout + 3, message="no contender left")


# --- 7. pruning keeps the record just created -----------------------------------------------------------


def test_prune_keeps_the_record_just_created(runner, kazoo):
    # Slot ids that do not sort in time order: b, then a.
    for slot in ("b", "a"):
        res = runner.run("job", ["true"], "--slot", slot, "--keep", 1)
        assert res.returncode == 0, res
    slots = [r["slot"] for r in _history(runner, "job")]
    print("\nhistory after --slot b then --slot a with --keep 1: %s" % slots)
    assert slots == ["a"], slots
    again = runner.run("job", ["sh", "-c", "exit 9"], "--slot", "a", "--keep", 1)
    assert again.returncode == 0 and "done" in [e for e, dummy in again.log_lines()], again
    assert runner.children(kazoo, "job") == []
