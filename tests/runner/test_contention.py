# -*- coding: utf-8 -*-
"""Several runners on one lock: mutual exclusion, skipping, waiting, and what `status` shows meanwhile."""

import json
import os

from zkharness import hostnames, records, wait_for


def _ready(path):
    return lambda: os.path.exists(path)


def test_concurrent_runners_take_turns(runner, kazoo):
    n = 8
    rec = runner.path("rec")
    bgs = [
        runner.start("turns", runner.worker(record=rec, sleep=0.15, tag="w%d" % i), "--wait", 60)
        for i in range(n)
    ]
    results = [bg.wait(90) for bg in bgs]
    assert [r.returncode for r in results] == [0] * n, results

    runs = {}
    for r in records(rec):
        runs.setdefault(r["pid"], {})[r["event"]] = r
    assert len(runs) == n, runs
    intervals = sorted((run["start"]["t"], run["end"]["t"], run["start"]) for run in runs.values())
    for (s1, e1, dummy_start1), (s2, e2, dummy_start2) in zip(intervals, intervals[1:]):
        assert e1 <= s2, "two COMMANDs overlapped: [%f, %f] and [%f, %f]" % (s1, e1, s2, e2)
    tokens = [int(start["env"]["ZOO_LOCKED_TOKEN"]) for dummy_s, dummy_e, start in intervals]
    assert all(a < b for a, b in zip(tokens, tokens[1:])), "tokens in start order: %s" % tokens
    holders = {start["env"]["ZOO_LOCKED_HOLDER"].rpartition(":")[2] for dummy_s, dummy_e, start in intervals}
    assert holders == {str(bg.pid) for bg in bgs}
    assert runner.children(kazoo, "turns") == []


def test_held_lock_is_skipped_at_once(runner, kazoo):
    ready, go = runner.path("ready"), runner.path("go")
    holder = runner.start("busy", runner.worker(ready=ready, until=go))
    wait_for(_ready(ready), 15, message="the holder's COMMAND to start")
    [holder_node] = runner.children(kazoo, "busy")

    marker = runner.path("ran")
    for options in ([], ["--wait", "0"]):
        res = runner.run("busy", ["touch", marker], *options)
        assert res.returncode == 75, res
        assert res.elapsed < 3, res
        assert not os.path.exists(marker), "COMMAND ran although the lock was held"
        assert [e for e, dummy_fields in res.log_lines()].count("skipped") == 1, res
        # A contender that gave up leaves no node behind (kazoo issue 732).
        assert runner.children(kazoo, "busy") == [holder_node]

    open(go, "w").close()
    assert holder.wait(15).returncode == 0
    assert runner.children(kazoo, "busy") == []


def test_waiter_runs_after_the_holder(runner, kazoo):
    rec, ready = runner.path("rec"), runner.path("ready")
    holder = runner.start("queue", runner.worker(record=rec, ready=ready, sleep=1.5, tag="holder"))
    wait_for(_ready(ready), 15, message="the holder's COMMAND to start")
    res = runner.run("queue", runner.worker(record=rec, tag="waiter", exit=5), "--wait", 30)
    assert res.returncode == 5, res
    assert holder.wait(10).returncode == 0
    [holder_end] = records(rec, "end", "holder")
    [waiter_start] = records(rec, "start", "waiter")
    assert holder_end["t"] <= waiter_start["t"]
    assert "waiting" in [e for e, dummy_fields in res.log_lines()], res
    assert runner.children(kazoo, "queue") == []


def test_wait_that_runs_out_gives_up(runner, kazoo):
    ready, go = runner.path("ready"), runner.path("go")
    holder = runner.start("patience", runner.worker(ready=ready, until=go))
    wait_for(_ready(ready), 15, message="the holder's COMMAND to start")
    [holder_node] = runner.children(kazoo, "patience")
    marker = runner.path("ran")
    res = runner.run("patience", ["touch", marker], "--wait", 1.5)
    assert res.returncode == 75, res
    assert 1.5 <= res.elapsed < 1.5 + 3, res
    assert not os.path.exists(marker)
    assert runner.children(kazoo, "patience") == [holder_node], "the waiter left its node behind"
    open(go, "w").close()
    assert holder.wait(15).returncode == 0


def _lock_status(runner, name, *extra):
    res = runner.status(name, "--json", *extra)
    assert res.returncode == 0, res
    data = json.loads(res.stdout)
    found = [lock for lock in data["locks"] if lock["name"] == name]
    assert len(found) == 1, data
    return found[0]


def test_status_shows_holder_and_waiter(runner, kazoo):
    rec, ready, go = runner.path("rec"), runner.path("ready"), runner.path("go")
    holder = runner.start(
        "shown", runner.worker(record=rec, ready=ready, until=go), "--owner", "alice", "--purpose", "nightly backup"
    )
    wait_for(_ready(ready), 15, message="the holder's COMMAND to start")
    waiter = runner.start("shown", ["true"], "--wait", 60, "--owner", "bob", "--purpose", "second")

    def shown_with_waiter():
        status = _lock_status(runner, "shown")
        return status if status["waiters"] else None

    lock = wait_for(shown_with_waiter, 15, interval=0.1, message="status to show a waiter")
    h = lock["holder"]
    assert set(h) >= {"host", "pid", "owner", "purpose", "since", "token"}, h
    assert int(h["pid"]) == holder.pid, h
    assert h["host"] in hostnames(), h
    assert h["owner"] == "alice" and h["purpose"] == "nightly backup", h
    assert h["since"], h
    assert int(h["token"]) == int(records(rec, "start")[0]["env"]["ZOO_LOCKED_TOKEN"]), h
    [w] = lock["waiters"]
    assert int(w["pid"]) == waiter.pid and w["owner"] == "bob" and w["purpose"] == "second", w

    text = runner.status("shown")
    assert text.returncode == 0, text
    assert "alice" in text.stdout and str(holder.pid) in text.stdout, text
    assert "bob" in text.stdout and str(waiter.pid) in text.stdout, text

    everything = runner.status("--json")
    assert everything.returncode == 0, everything
    assert "shown" in [lock["name"] for lock in json.loads(everything.stdout)["locks"]], everything

    open(go, "w").close()
    assert holder.wait(15).returncode == 0
    assert waiter.wait(15).returncode == 0
    lock = _lock_status(runner, "shown")
    assert lock["holder"] is None and lock["waiters"] == [], lock


def test_status_of_a_lock_never_used(runner):
    lock = _lock_status(runner, "never-used")
    assert lock == {"name": "never-used", "holder": None, "waiters": []}
