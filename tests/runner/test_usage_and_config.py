# -*- coding: utf-8 -*-
"""Refusals (bad names, bad usage, bad commands, bad configuration) and the configuration's precedence."""

import os

import pytest

from zkharness import free_port, wait_for

HOLD = "cfg-lock"


def _refused(runner, kazoo, res, code, marker, *mentions):
    assert res.returncode == code, res
    for text in mentions:
        assert text in res.stderr, "the message should mention %r: %r" % (text, res.stderr)
    assert not os.path.exists(marker), "COMMAND ran"
    assert runner.lock_nodes(kazoo) == [], "a refused run left lock nodes in ZooKeeper"


# --- lock names ------------------------------------------------------------------------------------------

BAD_NAMES = {
    "slash": "a/b",
    "root": "/",
    "dotdot": "..",
    "dot": ".",
    "leading-dot": ".x",
    "101-chars": "x" * 101,
    "empty": "",
    "unicode": "lock-\u00e9",
    "space": "a b",
    "colon": "a:b",
    "star": "*",
    "newline": "a\nb",
}


@pytest.mark.parametrize("name", list(BAD_NAMES.values()), ids=list(BAD_NAMES))
def test_bad_lock_name(runner, kazoo, name):
    marker = runner.path("ran")
    res = runner.run(name, ["touch", marker])
    # The message says what is allowed.
    _refused(runner, kazoo, res, 64, marker, "A-Z", "100")


@pytest.mark.parametrize("name", ["x" * 100, "a.b", "A_b-9", "x.", "0"])
def test_good_lock_name(runner, name):
    res = runner.run(name, ["true"])
    assert res.returncode == 0, res


# --- usage -----------------------------------------------------------------------------------------------


def _usage_cases(conn):
    return {
        "missing --": (["run", "NAME"] + conn + ["touch", "MARKER"], ["--"]),
        "missing command": (["run", "NAME"] + conn + ["--"], []),
        "missing name": (["run"], []),
        "no subcommand": ([], []),
        "unknown subcommand": (["frobnicate"] + conn, ["frobnicate"]),
        "unknown option": (["run", "NAME", "--bogus"] + conn + ["--", "touch", "MARKER"], ["--bogus"]),
        "wait not a number": (["run", "NAME", "--wait", "abc"] + conn + ["--", "touch", "MARKER"], ["wait"]),
        "wait negative": (["run", "NAME", "--wait", "-1"] + conn + ["--", "touch", "MARKER"], ["wait"]),
        "timeout not a number": (["run", "NAME", "--timeout", "soon"] + conn + ["--", "touch", "MARKER"], ["timeout"]),
        "timeout negative": (["run", "NAME", "--timeout", "-5"] + conn + ["--", "touch", "MARKER"], ["timeout"]),
        "kill-after negative": (["run", "NAME", "--kill-after", "-1"] + conn + ["--", "touch", "MARKER"],
                                ["kill-after"]),
        "session-timeout not a number": (["run", "NAME", "--session-timeout", "x"] + conn + ["--", "touch", "MARKER"],
                                         ["session-timeout"]),
        "status unknown option": (["status", "--bogus"] + conn, ["--bogus"]),
        "status bad name": (["status", "a/b"] + conn, ["A-Z"]),
    }


USAGE_IDS = list(_usage_cases([]))


@pytest.mark.parametrize("case", USAGE_IDS)
def test_bad_usage(runner, kazoo, case):
    marker = runner.path("ran")
    args, mentions = _usage_cases(runner.conn())[case]
    args = [marker if a == "MARKER" else a for a in args]
    res = runner.raw(args)
    _refused(runner, kazoo, res, 64, marker, *mentions)
    assert res.stderr.strip(), "no message at all"


# --- the command -----------------------------------------------------------------------------------------


def test_command_not_found(runner, kazoo):
    for command in ("/nonexistent/zoo-locked-test-cmd", "zoo-locked-no-such-command"):
        res = runner.run("notfound", [command, "arg"])
        assert res.returncode == 127, res
        assert command in res.stderr, res
        assert runner.children(kazoo, "notfound") == []


def test_command_not_executable(runner, kazoo, tmp_path):
    plain = tmp_path / "not-executable"
    plain.write_text("#!/bin/sh\necho ran\n")
    plain.chmod(0o644)
    for command in (str(plain), str(tmp_path)):
        res = runner.run("noexec", [command])
        assert res.returncode == 126, res
        assert "ran" not in res.stdout
        assert command in res.stderr, res
        assert runner.children(kazoo, "noexec") == []


# --- configuration: refusals -----------------------------------------------------------------------------

BAD_FILES = {
    "not INI": ("this is not an INI file\n", None),
    "broken section header": ("[zoo-locked\nhosts = 127.0.0.1:2181\n", None),
    "missing section": ("[other]\nhosts = 127.0.0.1:2181\n", "zoo-locked"),
    "unknown key": ("[zoo-locked]\nhots = 127.0.0.1:2181\n", "hots"),
    "duplicate key": ("[zoo-locked]\nroot = /a\nroot = /b\n", "root"),
    "session_timeout not a number": ("[zoo-locked]\nsession_timeout = abc\n", "session_timeout"),
    "connect_timeout negative": ("[zoo-locked]\nconnect_timeout = -1\n", "connect_timeout"),
    "root relative": ("[zoo-locked]\nroot = relative/path\n", "root"),
    "hosts garbage": ("[zoo-locked]\nhosts = not a host!\n", "hosts"),
}


@pytest.mark.parametrize("how", ["--config", "ZOO_LOCKED_CONFIG"])
@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_config_file(runner, kazoo, tmp_path, case, how):
    text, key = BAD_FILES[case]
    path = tmp_path / "zoo-locked.conf"
    path.write_text(text)
    marker = runner.path("ran")
    # --hosts and --root are left out: the file's own values must be looked at.
    args = ["run", "cfg", "--connect-timeout", "2"]
    env = None
    if how == "--config":
        args += ["--config", str(path)]
    else:
        env = {"ZOO_LOCKED_CONFIG": str(path)}
    res = runner.raw(args + ["--", "touch", marker], env=env)
    _refused(runner, kazoo, res, 78, marker, str(path), *([key] if key else []))


@pytest.mark.parametrize("kind", ["missing", "directory"])
def test_unreadable_config_file(runner, kazoo, tmp_path, kind):
    path = tmp_path / ("nothing-here.conf" if kind == "missing" else "a-directory")
    if kind == "directory":
        path.mkdir()
    marker = runner.path("ran")
    res = runner.raw(["run", "cfg"] + runner.conn() + ["--config", str(path), "--", "touch", marker])
    _refused(runner, kazoo, res, 78, marker, str(path))


BAD_ENV = {
    "ZOO_LOCKED_SESSION_TIMEOUT": "abc",
    "ZOO_LOCKED_CONNECT_TIMEOUT": "-1",
    "ZOO_LOCKED_ROOT": "relative/path",
    "ZOO_LOCKED_HOSTS": "not a host!",
}


@pytest.mark.parametrize("var", list(BAD_ENV))
def test_bad_environment_value(runner, kazoo, var):
    marker = runner.path("ran")
    # Leave out the option that would override the variable.
    hosts = False if var == "ZOO_LOCKED_HOSTS" else None
    root = False if var == "ZOO_LOCKED_ROOT" else None
    args = ["run", "env"] + runner.conn(hosts=hosts, root=root) + ["--", "touch", marker]
    res = runner.raw(args, env={var: BAD_ENV[var]})
    _refused(runner, kazoo, res, 78, marker, var)


# --- configuration: precedence ---------------------------------------------------------------------------


def _config(tmp_path, **settings):
    path = tmp_path / ("conf-%d.conf" % len(list(tmp_path.glob("conf-*.conf"))))
    path.write_text("[zoo-locked]\n" + "".join("%s = %s\n" % kv for kv in settings.items()))
    return str(path)


def _holds_under(runner, kazoo, args, env=None):
    """Run a COMMAND that waits, and return the roots (of those given) under which its lock node is."""
    ready, go = runner.path("ready"), runner.path("go")
    from zkharness import Background

    bg = Background(["run", HOLD] + args + ["--"] + runner.worker(ready=ready, until=go), env=env, mark=runner.mark)
    runner.background.append(bg)
    try:
        wait_for(lambda: os.path.exists(ready) or bg.poll() is not None, 15, message="COMMAND to start")
        assert os.path.exists(ready), bg.wait(5)
        return [root for root in _candidate_roots(runner) if runner.children(kazoo, HOLD, root=root)]
    finally:
        open(go, "w").close()
        res = bg.wait(15)
        assert res.returncode == 0, res


def _candidate_roots(runner):
    base = runner.zk.root
    return [base + "/file", base + "/env", base + "/flag", "/zoo-locked"]


def test_config_file_is_used(runner, kazoo, tmp_path):
    conf = _config(tmp_path, hosts=runner.zk.hosts, root=runner.zk.root + "/file", connect_timeout=2)
    assert _holds_under(runner, kazoo, ["--config", conf]) == [runner.zk.root + "/file"]
    assert _holds_under(runner, kazoo, [], env={"ZOO_LOCKED_CONFIG": conf}) == [runner.zk.root + "/file"]


def test_environment_beats_the_file(runner, kazoo, tmp_path):
    dead = "127.0.0.1:%d" % free_port()
    conf = _config(tmp_path, hosts=dead, root=runner.zk.root + "/file", connect_timeout=2)
    env = {"ZOO_LOCKED_HOSTS": runner.zk.hosts, "ZOO_LOCKED_ROOT": runner.zk.root + "/env"}
    assert _holds_under(runner, kazoo, ["--config", conf], env=env) == [runner.zk.root + "/env"]


def test_flags_beat_the_environment(runner, kazoo, tmp_path):
    dead = "127.0.0.1:%d" % free_port()
    conf = _config(tmp_path, hosts=dead, root=runner.zk.root + "/file", connect_timeout=2)
    env = {"ZOO_LOCKED_HOSTS": dead, "ZOO_LOCKED_ROOT": runner.zk.root + "/env", "ZOO_LOCKED_CONNECT_TIMEOUT": "2"}
    args = ["--config", conf, "--hosts", runner.zk.hosts, "--root", runner.zk.root + "/flag"]
    assert _holds_under(runner, kazoo, args, env=env) == [runner.zk.root + "/flag"]


def test_config_flag_beats_config_variable(runner, kazoo, tmp_path):
    broken = tmp_path / "broken.conf"
    broken.write_text("not INI at all\n")
    good = _config(tmp_path, hosts=runner.zk.hosts, root=runner.zk.root + "/file")
    roots = _holds_under(runner, kazoo, ["--config", good], env={"ZOO_LOCKED_CONFIG": str(broken)})
    assert roots == [runner.zk.root + "/file"]


def test_default_root(runner, kazoo):
    name_root = "/zoo-locked"
    assert _holds_under(runner, kazoo, ["--hosts", runner.zk.hosts]) == [name_root]
