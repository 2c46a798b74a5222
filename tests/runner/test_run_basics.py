# -*- coding: utf-8 -*-
"""zoo-locked run: what COMMAND sees, pass-through of streams and exit codes, the event log."""

import re
import signal

import pytest

from zkharness import hostnames, pid_alive, records, wait_for

EVENTS = ("waiting", "acquired", "skipped", "stopping", "released", "lost", "error")


def test_command_sees_its_lock_in_the_environment(runner, kazoo):
    rec = runner.path("rec")
    bg = runner.start("env-lock", runner.worker(record=rec))
    res = bg.wait(30)
    assert res.returncode == 0, res
    [start] = records(rec, "start")
    env = start["env"]
    assert env.get("ZOO_LOCKED_NAME") == "env-lock", env
    host, dummy_sep, pid = env.get("ZOO_LOCKED_HOLDER", "").rpartition(":")
    assert pid == str(bg.pid), "ZOO_LOCKED_HOLDER %r is not host:<runner pid %d>" % (env.get("ZOO_LOCKED_HOLDER"), bg.pid)
    assert host in hostnames(), env
    assert re.fullmatch(r"[0-9]+", env.get("ZOO_LOCKED_TOKEN", "")), env
    # COMMAND runs in a process group of its own.
    assert start["pgid"] == start["pid"], start
    # Released as soon as COMMAND ends: no node is left for the session to clean up later.
    assert runner.children(kazoo, "env-lock") == []


def test_token_increases_with_every_holder(runner):
    tokens = []
    for attempt in range(4):
        rec = runner.path("rec")
        res = runner.run("tokens", runner.worker(record=rec))
        assert res.returncode == 0, res
        tokens.append(int(records(rec, "start")[0]["env"]["ZOO_LOCKED_TOKEN"]))
    assert all(a < b for a, b in zip(tokens, tokens[1:])), tokens


def test_arguments_are_passed_verbatim_without_a_shell(runner):
    args = ["a b", "$HOME", "*", "'q'", ";", "", "ünï"]
    res = runner.run("verbatim", ["printf", "%s|"] + args)
    assert res.returncode == 0, res
    assert res.stdout == "|".join(args) + "|", res


def test_stdin_and_stdout_pass_through(runner):
    # More than a pipe buffer holds, so a runner that does not really pass the streams through would block.
    data = "".join("line %06d of the input\n" % i for i in range(20000))
    res = runner.run("cat", ["cat"], input=data)
    assert res.returncode == 0, res.stderr
    assert res.stdout == data


def test_stdout_is_only_the_commands(runner):
    res = runner.run("streams", ["sh", "-c", "echo out; echo err >&2"])
    assert res.returncode == 0, res
    assert res.stdout == "out\n", res
    assert "err\n" in res.stderr, res


@pytest.mark.parametrize(
    "script, code",
    [
        ("exit 0", 0),
        ("exit 3", 3),
        ("exit 255", 255),
        ("kill -TERM $$", 128 + signal.SIGTERM),
        ("kill -KILL $$", 128 + signal.SIGKILL),
        ("kill -USR1 $$", 128 + signal.SIGUSR1),
    ],
)
def test_exit_status_passes_through(runner, kazoo, script, code):
    res = runner.run("status-code", ["sh", "-c", script])
    assert res.returncode == code, res
    assert runner.children(kazoo, "status-code") == []


def test_events_are_logged_one_line_each(runner):
    res = runner.run("logged", ["true"])
    assert res.returncode == 0, res
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    for line in lines:
        assert re.match(r"zoo-locked: (%s)( [A-Za-z_]+=\S*)*$" % "|".join(EVENTS), line), (
            "not a `zoo-locked: EVENT key=value ...` line: %r" % line
        )
    events = [event for event, dummy_fields in res.log_lines()]
    assert events.count("acquired") == 1 and events.count("released") == 1, res
    assert events.index("acquired") < events.index("released"), res
    acquired = res.log_lines("acquired")[0][1]
    assert acquired.get("name") == "logged", res
    assert re.fullmatch(r"[0-9]+", acquired.get("token", "")), res


def test_leftovers_of_the_group_are_killed(runner, kazoo):
    pidfile = runner.path("pid")
    # COMMAND exits at once, leaving a background child in its process group.
    res = runner.run("leftover", ["sh", "-c", "sleep 300 & echo $! > %s" % pidfile])
    assert res.returncode == 0, res
    pid = int(open(pidfile).read())
    wait_for(lambda: not pid_alive(pid), 2, message="the leftover `sleep 300` (pid %d) to be killed" % pid)
    assert runner.children(kazoo, "leftover") == []


@pytest.mark.parametrize("args", [["--help"], ["run", "--help"], ["status", "--help"]], ids=" ".join)
def test_help(runner, args):
    res = runner.raw(args)
    assert res.returncode == 0, res
    assert "usage" in res.stdout.lower(), res


def test_version(runner):
    res = runner.raw(["--version"])
    assert res.returncode == 0, res
    assert re.search(r"[0-9]+\.[0-9]+", res.stdout + res.stderr), res


def test_syslog_option_is_accepted(runner):
    # This machine may have no syslog daemon (/dev/log): the events still go to stderr and COMMAND runs.
    res = runner.run("syslogged", ["sh", "-c", "exit 4"], "--syslog")
    assert res.returncode == 4, res
    assert "acquired" in [e for e, dummy_fields in res.log_lines()], res
