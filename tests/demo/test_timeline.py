"""The demo's timeline code (tests/demo/timeline.py) on the output of real runners against the test ZooKeeper.

`make demo` itself (tests/demo/demo.py, containers) is not run by `make test`; these tests prove that what it
prints comes right from what the runner really logs: the same Fleet, parser and summary, with local runner
processes named n1, n2, n3 instead of `docker exec` on three nodes.
"""

import os
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from timeline import Fleet, Outcome, parse_event, render  # noqa: E402
from zkharness import ZOO_LOCKED, runner_env  # noqa: E402

NODES = ["n1", "n2", "n3"]


def _start_all(fleet, runner, name, command, *options):
    env = runner_env(None, runner.mark)
    for node in NODES:
        fleet.start(node, [ZOO_LOCKED] + runner.run_args(name, command, options), env=env)


def _all_runner_lines_parsed(fleet):
    logged = [line for line in fleet.lines if line.stream == "err"]
    assert logged, "the runners logged nothing"
    assert [line.text for line in logged if line.event is None] == []
    return logged


def test_parse_event_reads_words_json_strings_and_seconds():
    text = ('zoo-locked: skipped name=invoices host=web1 holder="root (host web2, pid 12, purpose sh -c '
            '\\"a=1 b\\", since 2026-11-27T10:00:00Z, token 42)" waited=0.012s slot=s1')
    event, fields = parse_event(text)
    assert event == "skipped"
    assert fields == {"name": "invoices", "host": "web1", "waited": 0.012, "slot": "s1",
                      "holder": 'root (host web2, pid 12, purpose sh -c "a=1 b", since 2026-11-27T10:00:00Z, token 42)'}
    assert parse_event("generating invoices") is None
    assert parse_event("zoo-locked: internal error: KeyError: 'x' (please report it)") is None
    assert parse_event('zoo-locked: error reason="unterminated') is None


def test_one_job_on_three_nodes_at_once_one_runs_and_the_timeline_says_who_and_why(runner):
    fleet = Fleet()
    t0 = time.time()
    try:
        _start_all(fleet, runner, "invoices", ["sh", "-c", "echo token=$ZOO_LOCKED_TOKEN; sleep 3"],
                   "--slot", "s1", "--wait", "0")
        codes = fleet.wait(60)
    finally:
        fleet.kill()
    _all_runner_lines_parsed(fleet)
    outcome = Outcome(fleet.lines)
    ((ran, token),) = outcome.ran
    assert codes[ran] == 0
    # The job saw the very token the timeline shows.
    assert [line.text for line in fleet.lines if line.node == ran and line.stream == "out"] == ["token=%s" % token]
    others = [node for node in NODES if node != ran]
    summary = outcome.summary()
    assert summary[0] == "%s ran the job (fencing token %s)" % (ran, token)
    for node in others:
        # Started together, the others find the lock held (exit 75); one started very late could find the
        # slot already done (exit 0). Either way the timeline must name the node that ran it.
        if node in outcome.skipped:
            assert codes[node] == 75
            assert outcome.skipped[node] == token
            assert "%s skipped: the lock was held by %s (token %s)" % (node, ran, token) in summary
        else:
            assert codes[node] == 0 and "on %s, token %s, exit 0" % (os.uname()[1], token) in " ".join(summary)
    rows = render(fleet.lines, t0)
    assert [row.split()[1:3] for row in rows if " acquired " in row] == [[ran, "acquired"]]
    assert any(row.split()[1:3] == [ran, "released"] and "exit 0" in row for row in rows)
    assert all(("lock held by %s (token %s)" % (ran, token)) in row for row in rows if " skipped " in row)

    # Fired again for the same slot: nobody runs it, and each says who did.
    again = Fleet()
    try:
        _start_all(again, runner, "invoices", ["sh", "-c", "echo ran again"], "--slot", "s1", "--wait", "30")
        codes = again.wait(60)
    finally:
        again.kill()
    _all_runner_lines_parsed(again)
    outcome = Outcome(again.lines)
    assert codes == dict((node, 0) for node in NODES)
    assert outcome.ran == [] and sorted(outcome.done) == NODES
    assert all(record.startswith("succeeded by ") and "token %s" % token in record for record in outcome.done.values())


def test_holder_killed_the_timeline_shows_the_takeover(runner):
    fleet = Fleet()
    t0 = time.time()
    try:
        _start_all(fleet, runner, "backup", ["sh", "-c", "echo start $ZOO_LOCKED_TOKEN; sleep 4; echo end"],
                   "--slot", "b1", "--wait", "60", "--session-timeout", "2")
        acquired = fleet.watch(lambda line: line.event == "acquired", 30)
        assert acquired is not None, [line.text for line in fleet.lines]
        assert fleet.watch(lambda line: sum(x.event == "waiting" for x in fleet.lines) >= 2, 30) is not None
        holder, first_token = acquired.node, acquired.fields["token"]
        # "acquired" is logged before the run record is written; killed in between, the next holder finds no
        # record of a run and has nothing to take over. Kill only once COMMAND has started (as the demo does).
        started = fleet.watch(lambda line: line.node == holder and line.stream == "out", 30)
        assert started is not None, [line.text for line in fleet.lines]
        fleet.mark(holder, "killed", "SIGKILL to the runner")
        fleet.procs[holder].send_signal(signal.SIGKILL)
        takeover = fleet.watch(lambda line: line.event == "failover", 30)
        assert takeover is not None, [line.text for line in fleet.lines]
        codes = fleet.wait(60)
    finally:
        fleet.kill()
    _all_runner_lines_parsed(fleet)
    outcome = Outcome(fleet.lines)
    assert outcome.killed == [holder]
    assert outcome.failover == {takeover.node: first_token}
    assert [node for node, token in outcome.ran] == [holder, takeover.node]
    second_token = outcome.ran[1][1]
    assert int(second_token) > int(first_token)
    (third,) = [node for node in NODES if node not in (holder, takeover.node)]
    assert codes[takeover.node] == 0 and codes[third] == 0 and codes[holder] == -signal.SIGKILL
    assert "token %s" % second_token in outcome.done[third]
    summary = outcome.summary()
    assert "%s ran the job (fencing token %s), then was killed" % (holder, first_token) in summary
    assert "%s took over and ran the job (fencing token %s) after %s died" % (
        takeover.node, second_token, holder) in summary
    rows = render(fleet.lines, t0)
    (failover_row,) = [row for row in rows if " failover " in row]
    assert failover_row.split()[1] == takeover.node
    assert "left running by %s (token %s)" % (holder, first_token) in failover_row
    # In time order: the kill, then the takeover, then the end of the second run.
    order = [row.split()[2] for row in rows if row.split()[1] in (holder, takeover.node)]
    assert order.index("killed") < order.index("failover") < order.index("released")
