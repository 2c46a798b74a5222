# -*- coding: utf-8 -*-
"""Regression tests, against real ZooKeeper, for four items of an adversarial review (all fixed in code):

1. kazoo opens a new session by itself once the old one expired, so an old holder's run-record write could land
   after its lock is gone (``Records.write`` checks our contender node in the same transaction, and retries a
   ConnectionLoss only in the same session; the ``Guard`` treats another session id as the lock lost).
2. The session timeout was read once per run, although kazoo negotiates it again at every reconnect, with a server
   whose maxSessionTimeout may be smaller (``Session`` keeps the shortest value granted; the supervisor reads it at
   every turn of its loop).
3. After a ConnectionLoss on the contender's create, our own contender is looked for in a listing that follows a
   ``sync`` (a stale follower could hide it, and the runner would queue a second contender of its own).
4. Every deadline of the kill path is on CLOCK_BOOTTIME (``_clock.now``), which counts suspend.

Overlaps are measured from the commands' own clocks: each COMMAND (the ticker of tests/overlap.py) appends
``TIME PID TAG`` to a file every 20 ms, and ``last tick of the old holder - first tick of the new one`` must be
negative.

How each test was checked to be able to fail is in its docstring (ZOO_LOCKED_TEST_BIN selects the runner under
test: the pre-fix tree, or a copy of module_utils with one of the fixes taken out).
"""

import importlib
import json
import os
import sys
import threading
import time

import pytest

import zkharness
from overlap import (
    Ticker, close_client, finish, kazoo_client, kill_tickers, last_tick, overlap_of, started_ensemble, ticks,
    wait_first_tick,
)
from tcpproxy import RequestProxy, TCPProxy
from zkensemble import ZKEnsemble
from zkharness import free_port, pid_alive, wait_for


@pytest.fixture(scope="module")
def ticker(tmp_path_factory):
    return Ticker(tmp_path_factory.mktemp("ticker"))


def history(runner, name, hosts=None):
    result = runner.raw(["history", name, "--json"] + runner.conn(hosts=hosts))
    assert result.returncode == 0, result
    return json.loads(result.stdout)["runs"]


def events(result):
    return [e for e, dummy in result.log_lines()]


def start_a(runner, ticker, fa, proxy, session_timeout):
    """A: the holder behind the proxy (--slot s1; its COMMAND ignores SIGTERM), once its COMMAND ticks."""
    a = runner.start("job", ticker(fa, tag="A", ignore_term=True), "--slot", "s1",
                     "--session-timeout", session_timeout, hosts=proxy.hosts)
    wait_first_tick(fa, "A")
    return a


# --- 1. the old holder's record write after its session expired --------------------------------------------


@pytest.mark.timeout(60)
def test_expired_holder_never_writes_over_its_successor(runner, zk_server, proxy_factory, kazoo, ticker):
    """A (behind a proxy, --slot s1, COMMAND ignores SIGTERM) is frozen until its session expires; B (direct, same
    slot, --wait 30) takes the lock, finds the slot `running`, fails over and succeeds; only then is A thawed, while
    A is still trying to write its outcome (`stopped`), and its kazoo reconnects (the old session is gone: a new
    one). The record must end `succeeded` with A's attempt `died` and B's `succeeded` last; A exits 70.

    Could fail? Against the pre-fix runner it passes: kazoo fails the write queued while A reconnects with
    SessionExpiredError, and the record's version (B wrote twice since A read it) would refuse it anyway. A copy of
    module_utils whose Records.write retries after SessionExpiredError in kazoo's new session with neither the
    holder check, nor the session check, nor the version fails it: the record ends `stopped`, A's attempt only.
    The next test is the one that needs the checks themselves.
    """
    session_timeout = 5.0
    proxy = proxy_factory(zk_server.port)
    fa, fb = runner.path("a"), runner.path("b")
    try:
        a = start_a(runner, ticker, fa, proxy, session_timeout)
        b = runner.start("job", ticker(fb, tag="B", duration=0.3), "--slot", "s1", "--wait", 30,
                         "--session-timeout", session_timeout)
        wait_for(lambda: len(runner.children(kazoo, "job")) == 2, 20, message="B to queue behind A")
        frozen_at = proxy.freeze()
        b_res = finish(b, 30)
        a_running_at_thaw = a.poll() is None
        proxy.thaw()
        thawed_at = time.time()
        a_res = finish(a, 20)
        runs = history(runner, "job")
        overlap = overlap_of(fa, fb, "expired holder thawed after its successor")
        a_last = last_tick(fa)
        print("A's COMMAND last ticked %.3f s after the freeze; B started %.3f s after it; thawed %.3f s after it "
              "(A %s then)" % (
                  a_last - frozen_at, ticks(fb)[0][0] - frozen_at, thawed_at - frozen_at,
                  "still running" if a_running_at_thaw else "had exited"))
        print("A: exit %s; its log:\n%s" % (a_res.returncode if a_res else "STILL RUNNING", a.stderr))
        print("history %s" % [(r["state"], [(x["state"], x["pid"]) for x in r["attempts"]]) for r in runs])
        assert b_res is not None and b_res.returncode == 0, b_res or b
        assert "failover" in events(b_res), b_res
        assert a_running_at_thaw, "A exited before the thaw: the test did not make it write after the thaw"
        assert overlap < 0, "A's COMMAND ran %.3f s after B's started" % overlap
        assert a_res is not None and a_res.returncode == 70, a_res or a
        [run] = runs
        assert run["state"] == "succeeded", run
        assert [x["state"] for x in run["attempts"]] == ["died", "succeeded"], run
        assert [x["pid"] for x in run["attempts"]] == [a.pid, b.pid], run
        wait_for(lambda: runner.children(kazoo, "job") == [], session_timeout + 3, message="no contender left")
    finally:
        kill_tickers(fa, fb)


@pytest.mark.timeout(60)
def test_expired_holder_leaves_the_slot_to_failover(runner, zk_server, proxy_factory, kazoo, ticker):
    """As above, but nobody waits: A's session expires while it is frozen, A is thawed (its kazoo opens a new
    session) while it still tries to write `stopped`, and only after A has exited does B come for the slot. A's
    write must not have landed (its lock was gone): B must find the slot `running`, mark A's attempt `died`, run it
    and succeed. A `stopped` outcome landed after the lock was gone would make B skip the slot (stopped is not
    retried without --retry-failed).

    Could fail? Passes on the pre-fix runner (kazoo fails the queued write with SessionExpiredError). Fails on a
    copy of module_utils whose Records.write also retries after SessionExpiredError and lacks both the holder check
    and the session check: A's `stopped` lands in kazoo's new session (the version still matches), B says `done`.
    Either check alone keeps it passing (each was taken out alone, with the retry after SessionExpiredError).
    """
    session_timeout = 5.0
    proxy = proxy_factory(zk_server.port)
    fa, fb = runner.path("a"), runner.path("b")
    try:
        a = start_a(runner, ticker, fa, proxy, session_timeout)
        [node] = runner.children(kazoo, "job")
        frozen_at = proxy.freeze()
        # The server expires A's session (its contender goes) after the session timeout.
        wait_for(lambda: runner.children(kazoo, "job") == [], session_timeout + 3, interval=0.02,
                 message="A's session to expire on the server")
        expired_at = time.time()
        a_running_at_thaw = a.poll() is None
        proxy.thaw()
        a_res = finish(a, 20)
        b = runner.run("job", ticker(fb, tag="B", duration=0.3), "--slot", "s1", "--session-timeout", session_timeout,
                       timeout=30)
        runs = history(runner, "job")
        print("\nA's contender %s gone %.3f s after the freeze; A %s at the thaw; A: exit %s; its log:\n%s"
              % (node, expired_at - frozen_at, "still running" if a_running_at_thaw else "had exited",
                 a_res.returncode if a_res else "STILL RUNNING", a.stderr))
        print("B: exit %s, events %s; history %s" % (b.returncode, events(b), [
            (r["state"], [(x["state"], x["pid"]) for x in r["attempts"]]) for r in runs]))
        assert a_running_at_thaw, "A exited before the thaw: the test did not make it write after the thaw"
        assert a_res is not None and a_res.returncode == 70, a_res or a
        assert b.returncode == 0, b
        assert "failover" in events(b), "B did not fail over: %s" % b
        assert ticks(fb), "B did not run the slot"
        [run] = runs
        assert run["state"] == "succeeded", run
        assert [x["state"] for x in run["attempts"]] == ["died", "succeeded"], run
        assert runner.children(kazoo, "job") == []
    finally:
        kill_tickers(fa, fb)


# --- 2. the session timeout renegotiated at a reconnect -------------------------------------------------------


@pytest.fixture
def clamping_ensemble(request, tmp_path):
    """Three servers, tickTime 500 ms; servers 2 and 3 grant up to 20 s, server 1 at most 4 s."""
    ens = ZKEnsemble(str(tmp_path / "ensemble"), size=3, tick_time=500, init_limit=10, sync_limit=10,
                     max_session_timeout=20000, max_session_timeouts={1: 4000})
    yield from started_ensemble(request, ens, ens.start)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("first, second", [(2, 1), (1, 2)], ids=["8s-then-4s", "4s-then-8s"])
def test_session_timeout_renegotiated_at_a_reconnect(runner, clamping_ensemble, ticker, first, second):
    """A asks for 8 s. It starts on server ``first`` (through a proxy; the other server's port in its host list has
    nothing behind it yet), then a proxy to server ``second`` opens there and the first one closes: A's kazoo
    reconnects, in the same session, to ``second``. Server 1 grants at most 4 s, server 2 the 8 s asked for. Then
    the proxy A uses freezes; B waits on servers 2 and 3. A's COMMAND ignores SIGTERM.

    What ZooKeeper does (3.8, measured here): a reconnect negotiates again, and the leader enforces the timeout
    of the *last* negotiation (its "Expiring session" message names the first one, but the expiry comes when the
    last one has passed since it last heard of the session: servers report sessions with their connection's
    timeout). 8s-then-4s: B's first tick comes about 4 s after the freeze, not 8. 4s-then-8s: about 8 s after it.

    The runner counts with the shortest timeout granted so far, read at every turn of its loop: 4 s in both cases.
    In 8s-then-4s that is what keeps the promise (COMMAND is SIGKILLed 0.75 x 4 s after the last answer, before
    the leader can hand the lock on); in 4s-then-8s it is harmless: COMMAND is stopped 3 s after the last answer,
    sooner than it had to be (the leader waits 8 s), never later.

    Could fail? 8s-then-4s fails on the pre-fix runner (the timeout read once per run: COMMAND killed 6 s after the
    last answer, while B starts after about 4 s: overlap about +1.8 s) and on a copy of the current code whose
    supervisor reads the timeout once per run. 4s-then-8s documents the server's behaviour and the min(); it
    passes on the pre-fix runner, which then counted with the 4 s of its start.
    """
    ens = clamping_ensemble
    session_timeout, counted = 8.0, 4.0
    leader_enforces = {1: 4.0, 2: 8.0}[second]
    to_first = TCPProxy(ens[first].port)
    second_port = free_port()
    to_second = None
    client = kazoo_client(ens.hosts([2, 3]))
    fa, fb = runner.path("a"), runner.path("b")
    try:
        hosts = [to_first.hosts, "127.0.0.1:%d" % second_port]
        a = runner.start("job", ticker(fa, tag="A", ignore_term=True), "--session-timeout", session_timeout,
                         hosts=",".join(hosts if first == 2 else hosts[::-1]))
        wait_first_tick(fa, "A")
        b = runner.start("job", ticker(fb, tag="B", duration=0.3), "--wait", 30, "--session-timeout", session_timeout,
                         hosts=ens.hosts([2, 3]))
        wait_for(lambda: len(runner.children(client, "job")) == 2, 20, message="B to queue behind A")
        acquired = [f for e, f in zkharness.parse_log(a.stderr) if e == "acquired"]
        assert acquired and acquired[0]["session_timeout"] == "%.3fs" % {1: 4.0, 2: 8.0}[first], a.stderr

        to_second = TCPProxy(ens[second].port, listen_port=second_port)
        to_first.close()  # A's connection breaks, and the first server refuses it from now on
        wait_for(lambda: to_second.upstream_connections() >= 1, 10, message="A to reconnect through the other server")
        time.sleep(1.5)  # a few heartbeats on the new server (every 0.4 s with 4 s)
        assert a.poll() is None and pid_alive(ticks(fa)[-1][1]), "A stopped before the freeze: %s" % a.stderr
        frozen_at = to_second.freeze()
        b_res = finish(b, 30)
        a_res = finish(a, 20)
        overlap = overlap_of(fa, fb, "reconnected from server %d to server %d" % (first, second))
        a_last = last_tick(fa)
        b_first = ticks(fb)[0][0] if ticks(fb) else float("nan")
        stopping = [line for line in (a_res.stderr if a_res else "").splitlines()
                    if line.startswith("zoo-locked: stopping ")]
        print("A's COMMAND last ticked %.3f s after the freeze (bound 0.75 x %.0f s = %.2f s after the last answer); "
              "B started %.3f s after it (the leader's expiry; granted at the reconnect: %.0f s); A %s; A: %s"
              % (a_last - frozen_at, counted, 0.75 * counted, b_first - frozen_at, leader_enforces,
                 "exit %s" % a_res.returncode if a_res else "STILL RUNNING", stopping))
        assert b_res is not None and b_res.returncode == 0, b_res or b
        # What ZooKeeper does: the leader enforces the timeout of the last negotiation.
        assert leader_enforces - 1.5 < b_first - frozen_at < leader_enforces + 1.0, (
            "the leader expired the session %.3f s after the freeze, not about %.0f s"
            % (b_first - frozen_at, leader_enforces))
        assert overlap < 0, "A's COMMAND ran %.3f s after B's started" % overlap
        assert a_last - frozen_at <= 0.75 * counted + 0.35, "A's COMMAND outlived 0.75 x %.0f s" % counted
        assert a_res is not None and a_res.returncode == 70, a_res or a
        # The supervisor counted with the shortest timeout granted (its reason names it).
        assert stopping and "of a %.1fs session" % counted in stopping[0], stopping
        assert runner.children(client, "job") == []
    finally:
        kill_tickers(fa, fb)
        close_client(client)
        to_first.close()
        if to_second is not None:
            to_second.close()


# --- 3. a ConnectionLoss on the contender's create -----------------------------------------------------------

CREATE2 = 15  # ZooKeeper's opcode of a create that returns the Stat (kazoo's create with include_data=True)


class ContenderSampler:
    """Samples the children of a lock every few milliseconds (and at every change, through a watch): the largest
    number of contenders of one runner (its pid, from the node's data) seen at once."""

    def __init__(self, client, path, pid):
        self.client, self.path, self.pid = client, path, pid
        self.most = 0
        self.samples = 0
        self.seen = set()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _sample(self):
        from kazoo.exceptions import NoNodeError

        try:
            children = self.client.get_children(self.path)
        except NoNodeError:
            return
        own = 0
        for child in children:
            try:
                data, dummy_stat = self.client.get("%s/%s" % (self.path, child))
            except NoNodeError:
                continue
            try:
                if json.loads(data.decode("utf-8")).get("pid") == self.pid:
                    own += 1
                    self.seen.add(child)
            except ValueError:
                pass
        self.samples += 1
        self.most = max(self.most, own)

    def _run(self):
        while not self.stop.is_set():
            self._sample()
            self.stop.wait(0.005)

    def close(self):
        self.stop.set()
        self.thread.join(5)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("landed", [True, False], ids=["create-landed-answer-lost", "create-lost"])
def test_connection_lost_on_the_contender_create(runner, zk, kazoo, tmp_path, landed):
    """The connection breaks at the runner's contender create (Create2, opcode 15): after the server's answer came
    back (the node exists; the answer is dropped) or before the request was forwarded (no node). The runner must
    find its node after the reconnect (a sync, then the listing) or create one: at most one contender of its own
    at any moment, COMMAND run once, no contender left; and ZooKeeper's own count of the lock's child changes
    (cversion: one create and one delete per contender) says exactly one contender was ever made when it landed.

    Could fail? On the pre-fix runner it passes: against one server, a listing without a sync finds the node too
    (a stale follower that hides it cannot be forced from outside; see the report). A copy of module_utils whose
    ``_find_own`` finds nothing (what a stale follower's listing shows) fails it: a second contender of its own
    queues behind the first, waits for itself, and the runner exits 75 without running COMMAND.
    """
    path = zk.lock_path("job")
    kazoo.ensure_path(path)  # so that the contender create is the runner's first Create2 (no makepath retry)
    before = kazoo.exists(path).cversion
    proxy = RequestProxy(zk.port, CREATE2, nth=1, when="answer" if landed else "before")
    count = str(tmp_path / "count")
    sampler = None
    try:
        bg = runner.start("job", ["sh", "-c", "echo ran >> %s; sleep 1" % count], "--wait", 5,
                          "--session-timeout", 4, hosts=proxy.hosts)
        sampler = ContenderSampler(kazoo, path, bg.pid)
        res = finish(bg, 30)
        sampler.close()
        sampler._sample()
        made = (kazoo.exists(path).cversion - before) / 2.0
        ran = open(count).read().split() if os.path.exists(count) else []
        print("\n[%s] proxy fired: %s, answer dropped: %s, reconnects %d; own contenders at once: at most %d over "
              "%d samples (%d seen); contenders made: %g; COMMAND ran %d time(s); runner exit %s, events %s"
              % ("landed" if landed else "lost", proxy.fired is not None, proxy.dropped_answer is not None,
                 proxy.accepted - 1, sampler.most, sampler.samples, len(sampler.seen), made, len(ran),
                 res.returncode if res else "STILL RUNNING", events(res) if res else bg.stderr))
        assert proxy.fired is not None, "the proxy never saw the contender create"
        if landed:
            assert proxy.dropped_answer is not None, "the create's answer never came back from the server"
        assert sampler.most <= 1, "the runner had %d contenders of its own at once" % sampler.most
        assert res is not None and res.returncode == 0, res or bg
        assert len(ran) == 1, "COMMAND ran %d times" % len(ran)
        assert made == 1, "%g contenders were made" % made
        assert runner.children(kazoo, "job") == []
    finally:
        if sampler is not None:
            sampler.close()
        proxy.close()


# --- 4. CLOCK_BOOTTIME ---------------------------------------------------------------------------------------


@pytest.fixture
def zoo_locked():
    """zoo_locked(MODULE): a module of the runner under test (ZOO_LOCKED_TEST_BIN's lib/zoo-locked, as its launcher
    finds it)."""
    lib = os.path.join(os.path.dirname(os.path.dirname(os.path.realpath(zkharness.ZOO_LOCKED))), "lib", "zoo-locked")

    def load(name):
        sys.path.insert(0, lib)
        try:
            return importlib.import_module("zoo_locked." + name)
        finally:
            sys.path.remove(lib)

    return load


SUSPENDED = 1e6  # seconds: a machine that was suspended for eleven days, so CLOCK_BOOTTIME is ahead of monotonic


@pytest.fixture
def suspended_clock(monkeypatch):
    """time.clock_gettime(CLOCK_BOOTTIME) as after a long suspend; the monotonic clock as it is (it stood still)."""
    real = time.clock_gettime

    def clock_gettime(clock):
        return real(clock) + (SUSPENDED if clock == time.CLOCK_BOOTTIME else 0.0)

    monkeypatch.setattr(time, "clock_gettime", clock_gettime)
    return lambda: time.clock_gettime(time.CLOCK_BOOTTIME)


def test_now_is_clock_boottime(zoo_locked):
    """Could fail? A now() on time.monotonic fails the second half (the monotonic clock does not count suspend)."""
    config = zoo_locked("_clock")
    before = time.clock_gettime(time.CLOCK_BOOTTIME)
    value = config.now()
    after = time.clock_gettime(time.CLOCK_BOOTTIME)
    assert before <= value <= after


def test_now_follows_clock_boottime_not_monotonic(zoo_locked, suspended_clock):
    config = zoo_locked("_clock")
    before = suspended_clock()
    value = config.now()
    after = suspended_clock()
    assert before <= value <= after, "now() %.3f is not CLOCK_BOOTTIME (%.3f..%.3f); monotonic says %.3f" % (
        value, before, after, time.monotonic())


@pytest.mark.timeout(60)
def test_kill_path_deadlines_are_on_clock_boottime(zoo_locked, suspended_clock, zk):
    """The lock's first last_ok (the send time of the sync that made it ours), the guard's last_ok at start and at
    each heartbeat (on_answer), and its deadline are all on CLOCK_BOOTTIME: with the boot clock 11 days ahead of the
    monotonic one, each of them must be within a second of it. The supervisor and the guardian take their now from
    _clock too.

    Could fail? On the pre-fix tree the lock's and guard's times were time.monotonic() (and _clock.now did not
    exist): the fixture's import or the first assertion fails.
    """
    config, zk_mod, lock_mod = zoo_locked("_clock"), zoo_locked("_zk"), zoo_locked("_lock")
    assert lock_mod.now is config.now and zoo_locked("_supervisor").now is config.now
    assert zoo_locked("_guardian").now is config.now
    session = zk_mod.Session(zk.hosts, 4.0, 5.0)
    session.start()
    try:
        lock = lock_mod.Lock(session, zk.root, "clock", lock_mod.contender_data("test", "clock"))
        before = suspended_clock()
        lock.acquire(0)
        after = suspended_clock()
        assert before <= lock.last_ok <= after, (lock.last_ok, before, after, time.monotonic())

        answers = []
        woke = threading.Event()
        guard = lock_mod.Guard(lock, woke.set, on_answer=answers.append)
        assert guard.last_ok == lock.last_ok
        assert guard.deadline == pytest.approx(lock.last_ok + session.session_timeout)
        guard.start()
        try:
            wait_for(lambda: len(answers) >= 2, 10, message="two heartbeats")
            now = suspended_clock()
            assert all(now - 2.0 <= sent <= now for sent in answers), (answers, now)
            assert now - 2.0 <= guard.last_ok <= now
            assert not guard.lost.is_set(), guard.reason
        finally:
            guard.stop()
        # A guard over a lock that has no last_ok yet starts counting from now().
        lock.last_ok = None
        fresh = lock_mod.Guard(lock, lambda: None)
        assert abs(fresh.last_ok - suspended_clock()) < 1.0, (fresh.last_ok, suspended_clock())
        lock.release()
    finally:
        session.close()
