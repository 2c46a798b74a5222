# -*- coding: utf-8 -*-
"""Stopping COMMAND: --timeout, signals to the runner, the runner killed, the lock node taken away."""

import os
import signal
import time

import pytest

from zkharness import pid_alive, records, wait_for


def _all_dead(pids):
    return lambda: not any(pid_alive(p) for p in pids)


def _started_pids(rec):
    return [r["pid"] for r in records(rec, "start")]


@pytest.mark.parametrize(
    "case, worker_args, kill_after, min_elapsed, max_elapsed",
    [
        # COMMAND obeys TERM: it ends right after the timeout, --kill-after is not waited for.
        ("obeys", {}, 5, 3.0, 5.5),
        # COMMAND ignores TERM: KILLed --kill-after seconds later.
        ("ignores", {"ignore_term": True}, 1, 4.0, 7.0),
        # COMMAND and its child ignore TERM: both are KILLed --kill-after seconds later.
        ("both-ignore", {"ignore_term": True, "child": "ignore-term"}, 1, 4.0, 7.0),
        # COMMAND obeys, its child ignores TERM: the child, left over, is KILLed (at once, or after
        # --kill-after: the spec allows both).
        ("child-ignores", {"child": "ignore-term"}, 1, 3.0, 7.0),
    ],
)
# --timeout 3, not 1: the child must have installed its TERM handler before the timeout, and a Python
# start-up can take more than a second on a loaded 2-core machine.
def test_timeout_stops_the_whole_group(runner, kazoo, case, worker_args, kill_after, min_elapsed, max_elapsed):
    rec = runner.path("rec")
    cmd = runner.worker(record=rec, sleep=60, **worker_args)
    bg = runner.start("slow", cmd, "--timeout", 3, "--kill-after", kill_after)
    res = bg.wait(20)
    ended = time.time()
    assert res.returncode == 124, res
    assert min_elapsed <= res.elapsed <= max_elapsed, res
    pids = _started_pids(rec)
    assert len(pids) == (2 if "child" in worker_args else 1), records(rec)
    wait_for(_all_dead(pids), 2, message="COMMAND's group %s to be dead" % pids)
    terms = records(rec, "signal")
    assert {r["pid"] for r in terms if r["sig"] == "TERM"} == set(pids), "TERM goes to the whole group first"
    if worker_args.get("ignore_term"):
        # KILL came no sooner than --kill-after after the TERM.
        assert ended - min(r["t"] for r in terms) >= 0.9 * kill_after
    assert not records(rec, "end"), "COMMAND was not stopped"
    assert "stopping" in [e for e, dummy_fields in res.log_lines()], res
    assert runner.children(kazoo, "slow") == []


@pytest.mark.parametrize("signame", ["TERM", "INT", "HUP"])
def test_signal_is_forwarded_to_the_group(runner, kazoo, signame):
    signum = getattr(signal, "SIG" + signame)
    rec, ready = runner.path("rec"), runner.path("ready")
    bg = runner.start("signalled", runner.worker(record=rec, ready=ready, sleep=60, child="plain"))
    wait_for(lambda: os.path.exists(ready), 15, message="COMMAND to start")
    pids = _started_pids(rec)
    bg.signal(signum)
    res = bg.wait(15)
    assert res.returncode == 128 + signum, res
    got = {(r["tag"], r["sig"]) for r in records(rec, "signal")}
    assert got == {("main", signame), ("child", signame)}, "signals seen by COMMAND's group: %s" % got
    wait_for(_all_dead(pids), 2, message="COMMAND's group to be dead")
    assert runner.children(kazoo, "signalled") == []
    # Released: the next runner gets the lock at once.
    again = runner.run("signalled", ["true"])
    assert again.returncode == 0, again


def test_signal_while_waiting_gives_up_cleanly(runner, kazoo):
    ready, go = runner.path("ready"), runner.path("go")
    holder = runner.start("queue", runner.worker(ready=ready, until=go))
    wait_for(lambda: os.path.exists(ready), 15, message="the holder's COMMAND to start")
    [holder_node] = runner.children(kazoo, "queue")
    marker = runner.path("ran")
    waiter = runner.start("queue", ["touch", marker], "--wait", 60)
    wait_for(lambda: len(runner.children(kazoo, "queue")) == 2, 15, message="the waiter's node")
    waiter.signal(signal.SIGTERM)
    res = waiter.wait(5)
    assert res.returncode != 0, res
    assert runner.children(kazoo, "queue") == [holder_node], "the waiter left its node behind"
    open(go, "w").close()
    assert holder.wait(15).returncode == 0
    assert not os.path.exists(marker), "COMMAND ran although the runner was told to stop while waiting"


def test_sigkill_of_the_runner(runner, kazoo):
    session_timeout = 2.0
    shpid, childpid = runner.path("shpid"), runner.path("childpid")
    script = "sleep 300 & echo $! > %s.tmp; mv %s.tmp %s; echo $$ > %s; wait" % (childpid, childpid, childpid, shpid)
    bg = runner.start("killed", ["sh", "-c", script], "--session-timeout", session_timeout)
    wait_for(lambda: os.path.exists(childpid) and os.path.exists(shpid), 15, message="COMMAND and its child")
    pids = [int(open(shpid).read()), int(open(childpid).read())]
    [node] = runner.children(kazoo, "killed")

    bg.signal(signal.SIGKILL)
    killed_at = time.monotonic()
    assert bg.wait(5).returncode == -signal.SIGKILL
    # The lock stays held: the session lives on until it expires.
    assert runner.children(kazoo, "killed") == [node]
    skipped = runner.run("killed", ["true"])
    assert skipped.returncode == 75, skipped

    wait_for(_all_dead(pids), 3 - (time.monotonic() - killed_at),
             message="`sh -c` and its child %s to die with the runner" % pids)

    wait_for(lambda: not runner.children(kazoo, "killed"), session_timeout + 5, interval=0.01,
             message="the lock node to go with the session")
    freed_after = time.monotonic() - killed_at
    print("lock freed %.3f s after the SIGKILL (session timeout %.1f s)" % (freed_after, session_timeout))
    assert 0.5 * session_timeout <= freed_after <= session_timeout + 2.5, freed_after
    res = runner.run("killed", ["true"])
    assert res.returncode == 0, res


def test_deleted_lock_node_stops_the_command(runner, kazoo, zk):
    rec, ready = runner.path("rec"), runner.path("ready")
    bg = runner.start("stolen", runner.worker(record=rec, ready=ready, sleep=60, child="plain"))
    wait_for(lambda: os.path.exists(ready), 15, message="COMMAND to start")
    pids = _started_pids(rec)
    [node] = runner.children(kazoo, "stolen")
    kazoo.delete("%s/%s" % (zk.lock_path("stolen"), node))
    deleted_at = time.monotonic()
    res = bg.wait(15)
    assert res.returncode == 70, res
    assert time.monotonic() - deleted_at < 10, res
    wait_for(_all_dead(pids), 2, message="COMMAND's group to be dead")
    assert not records(rec, "end"), "COMMAND ran to its end"
    assert "lost" in [e for e, dummy_fields in res.log_lines()], res
    assert runner.children(kazoo, "stolen") == []
