"""Slots: each scheduled run happens once across the cluster (issue 5), against a real ZooKeeper."""

import json
import random
import signal
import time

from faketime import REAL_CLOCK, skewed_env
from zkharness import records, wait_for


def _history(runner, name):
    result = runner.raw(["history", name, "--json", "--limit", "1000"] + runner.conn())
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)["runs"]


def _spread_start(runner, count, spread, args_for):
    """Start `count` runners at random moments over `spread` seconds; return them."""
    moments = sorted(random.uniform(0, spread) for dummy in range(count))
    started = time.monotonic()
    procs = []
    for moment in moments:
        delay = started + moment - time.monotonic()
        if delay > 0:
            time.sleep(delay)  # the spread is the point of the test: starts at chosen moments
        procs.append(args_for(len(procs)))
    return procs


def test_twenty_runners_one_slot_twenty_rounds(runner):
    """20 runners for one slot over a 1.5 s spread with a 0.2 s job: exactly one run, 20 rounds of 20."""
    record = runner.path("runs")
    for round_no in range(20):
        slot = "round-%02d" % round_no
        procs = _spread_start(
            runner, 20, 1.5,
            lambda i: runner.start("invoices", runner.worker(record=record, sleep=0.2, tag=slot),
                                   "--slot", slot, "--wait", "30"))
        results = [p.wait(60) for p in procs]
        assert all(r.returncode == 0 for r in results), [(r.returncode, r.stderr) for r in results if r.returncode]
        starts = records(record, "start", tag=slot)
        assert len(starts) == 1, "slot %s ran %d times" % (slot, len(starts))
    runs = _history(runner, "invoices")
    assert sorted(r["slot"] for r in runs) == ["round-%02d" % i for i in range(20)]
    assert all(r["state"] == "succeeded" and len(r["attempts"]) == 1 for r in runs)


def test_clock_skew_of_twenty_seconds_one_run_per_slot(runner):
    """Runners whose clocks are off by up to +-20 s agree on a one-minute schedule's slot. Each runner's clock is
    skewed for real (libfaketime): it sees a time near a minute mark 10 minutes ahead, off by its own skew."""
    record = runner.path("runs")
    base = (int(time.time()) // 60 + 10) * 60 + 1  # a minute mark (+1 s) well away from now
    for round_no in range(4):
        mark = base + 60 * round_no
        tag = "minute-%d" % round_no

        def start(i, mark=mark, tag=tag):
            skew = random.uniform(-20, 20)
            # The COMMAND drops the preload: its own time stamps are real ones.
            return runner.start("skewed", REAL_CLOCK + runner.worker(record=record, sleep=0.2, tag=tag),
                                "--schedule", "* * * * *", "--wait", "30",
                                env=skewed_env(mark - time.time() + skew))

        procs = _spread_start(runner, 10, 1.0, start)
        results = [p.wait(60) for p in procs]
        assert all(r.returncode == 0 for r in results), [(r.returncode, r.stderr) for r in results if r.returncode]
        assert len(records(record, "start", tag=tag)) == 1
        slots = {part.split("=", 1)[1] for r in results for line in r.stderr.splitlines()
                 for part in line.split() if part.startswith("slot=")}
        assert slots == {time.strftime("%Y%m%dT%H%M00Z", time.gmtime(mark))}, slots


def test_the_removed_clock_offset_hook_changes_nothing(runner):
    """ZOO_LOCKED_CLOCK_OFFSET was a test hook in production code (issue 18): -86400 made a runner take yesterday's
    slot and run it a second time, 'abc' crashed it. It is gone: a slot that ran is not run again, whatever it says."""
    to_next_hour = 3600 - time.time() % 3600
    if to_next_hour < 30:
        time.sleep(to_next_hour + 1)  # all runs within one hour: one @hourly slot
    record = runner.path("runs")
    first = runner.run("hooked", runner.worker(record=record, tag="first"), "--schedule", "@hourly")
    assert first.returncode == 0, first.stderr
    slot = [part.split("=", 1)[1] for line in first.stderr.splitlines() for part in line.split()
            if part.startswith("slot=")][0]
    for value in ("-86400", "abc", "nan"):
        again = runner.run("hooked", runner.worker(record=record, tag=value), "--schedule", "@hourly",
                           env={"ZOO_LOCKED_CLOCK_OFFSET": value})
        assert again.returncode == 0, (value, again.returncode, again.stderr)
        assert "Traceback" not in again.stderr and "internal error" not in again.stderr, (value, again.stderr)
        assert "slot=%s" % slot in again.stderr and " done " in again.stderr, (value, again.stderr)
        assert records(record, "start", tag=value) == [], "ZOO_LOCKED_CLOCK_OFFSET=%s ran a slot again" % value
    assert [(r["slot"], r["state"]) for r in _history(runner, "hooked")] == [(slot, "succeeded")]


def test_holder_killed_mid_run_a_waiter_runs_the_slot_once_more(runner):
    record = runner.path("runs")
    ready = runner.path("ready")
    common = ("--slot", "s1", "--wait", "60", "--session-timeout", "2")
    first = runner.start("backup", runner.worker(record=record, ready=ready, sleep=60, tag="first"), *common)
    wait_for(lambda: records(record, "start", tag="first"), 15, message="the first run to start")
    waiters = [runner.start("backup", runner.worker(record=record, sleep=0.3, tag="waiter"), *common)
               for dummy in range(3)]
    from kazoo.client import KazooClient

    zk = KazooClient(hosts=runner.zk.hosts)
    zk.start(timeout=10)
    try:
        wait_for(lambda: len(runner.children(zk, "backup")) == 4, 15, message="three waiters queued")
    finally:
        zk.stop()
        zk.close()
    killed_at = time.time()
    first.signal(signal.SIGKILL)
    results = [w.wait(60) for w in waiters]
    assert all(r.returncode == 0 for r in results), [(r.returncode, r.stderr) for r in results]
    starts = records(record, "start", tag="waiter")
    assert len(starts) == 1, "the slot ran %d more times" % len(starts)
    # The guardian killed the first COMMAND at once; the waiter started only once the session expired.
    assert starts[0]["t"] - killed_at >= 1.0
    (run,) = _history(runner, "backup")
    assert run["state"] == "succeeded"
    assert [a["state"] for a in run["attempts"]] == ["died", "succeeded"]
    assert run["attempts"][0]["token"] < run["attempts"][1]["token"]
    assert sum("failover" in r.stderr for r in results) == 1
    assert sum(" done " in r.stderr for r in results) == 2


def test_failed_run_is_not_retried_unless_asked(runner):
    record = runner.path("runs")
    assert runner.run("report", runner.worker(record=record, exit=3, tag="a"), "--slot", "d1").returncode == 3
    again = runner.run("report", runner.worker(record=record, tag="b"), "--slot", "d1")
    assert again.returncode == 0 and "not retried" in again.stderr
    assert records(record, "start", tag="b") == []
    retried = runner.run("report", runner.worker(record=record, tag="c"), "--slot", "d1", "--retry-failed")
    assert retried.returncode == 0 and len(records(record, "start", tag="c")) == 1
    (run,) = _history(runner, "report")
    assert run["state"] == "succeeded" and [a["exit"] for a in run["attempts"]] == [3, 0]


def test_slot_taken_too_late_is_missed(runner):
    record = runner.path("runs")
    ready = runner.path("ready")
    holder = runner.start("late", runner.worker(record=record, ready=ready, sleep=1.5, tag="holder"),
                          "--slot", "other")
    wait_for(lambda: records(record, "start", tag="holder"), 15, message="the holder to start")
    late = runner.run("late", runner.worker(record=record, tag="late"), "--slot", "m1", "--wait", "20",
                      "--max-delay", "0.5")
    assert holder.wait(30).returncode == 0
    assert late.returncode == 0 and "missed" in late.stderr
    assert records(record, "start", tag="late") == []
    states = dict((r["slot"], r["state"]) for r in _history(runner, "late"))
    assert states == {"other": "succeeded", "m1": "missed"}


def test_records_are_pruned_to_keep(runner):
    for i in range(6):
        assert runner.run("pruned", ["true"], "--slot", "2026-01-0%d" % (i + 1), "--keep", "3").returncode == 0
    assert [r["slot"] for r in _history(runner, "pruned")] == ["2026-01-06", "2026-01-05", "2026-01-04"]


def test_metrics_textfile(runner, tmp_path):
    metrics = tmp_path / "metrics"
    metrics.mkdir()
    assert runner.run("metered", ["true"], "--slot", "x", "--metrics-dir", str(metrics)).returncode == 0
    assert runner.run("metered", ["true"], "--slot", "x", "--metrics-dir", str(metrics)).returncode == 0
    from prometheus_client.parser import text_string_to_metric_families

    text = (metrics / "zoo_locked_metered.prom").read_text()
    values = dict((s.name, s.value) for f in text_string_to_metric_families(text) for s in f.samples)
    assert values["zoo_locked_last_exit_code"] == 0
    assert values["zoo_locked_slot_done_skips_total"] == 1
    assert values["zoo_locked_last_success_timestamp_seconds"] >= values["zoo_locked_last_start_timestamp_seconds"]
    assert not list(metrics.glob("*.prom.*")), "a temporary file was left behind"


def test_bad_slot_options_are_usage_errors(runner):
    cases = [
        (["--schedule", "61 * * * *"], "bad schedule"),
        (["--slot", "a/b"], "bad slot id"),
        (["--slot", "a", "--schedule", "@hourly"], "exclude each other"),
        (["--retry-failed"], "needs --schedule or --slot"),
        (["--slot", "a", "--keep", "0"], "--keep"),
    ]
    for options, message in cases:
        result = runner.run("badslot", ["true"], *options)
        assert result.returncode == 64, (options, result.returncode, result.stderr)
        assert message in result.stderr, (options, result.stderr)
