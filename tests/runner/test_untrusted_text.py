"""Text read from ZooKeeper is shown escaped, never raw (issue 18, item 10).

Anyone who can reach the servers may write a contender node or, on a tree without credentials, a run record:
host, owner, purpose, state and the rest are untrusted. An escape sequence printed raw would rewrite the
operator's terminal, and a CR/LF would forge lines of output or of the log. The nodes are planted with kazoo,
the real commands run, and their raw bytes are checked: no control character but each line's own newline, and
the escaped form visible. ``--json`` stays exact: it parses back to the planted values.
"""

import json

from zkharness import run_runner

from kazoo.security import make_digest_acl, OPEN_ACL_UNSAFE

# ESC sequences that clear the screen, set the window title and colour, a forged line after CR/LF, a DEL, a C1
# control (NEL), and a right-to-left override that reorders what the eye sees.
EVIL_HOST = "\x1b[2J\x1b[Hweb1\r\nzoo-locked: acquired name=forged"
EVIL_OWNER = "\x1b]0;owned\x07root"
EVIL_PURPOSE = "backup\x7f\x85\u202etxt.exe\x1b[31m red"
EVIL_PID = "\x1b[5m"
EVIL_STATE = "succeeded\r\n\x1b[1A\x1b[2K"


def _controls(data):
    """The control characters in a command's raw output (bytes), but the newline that ends each line."""
    text = data.decode("utf-8")
    return sorted({repr(c) for c in text if (ord(c) < 32 and c != "\n") or 0x7f <= ord(c) <= 0x9f
                   or c in "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"})


def _plant_contenders(kazoo, root, name):
    lock = "%s/locks/%s" % (root, name)
    kazoo.ensure_path(lock)
    holder = {"v": 1, "host": EVIL_HOST, "pid": EVIL_PID, "owner": EVIL_OWNER, "purpose": EVIL_PURPOSE,
              "started": "\x1b[2J", "kind": "run"}
    kazoo.create(lock + "/aaaa__lock__", json.dumps(holder).encode(), ephemeral=True, sequence=True)
    # A waiter whose data is no JSON object (as a kazoo Lock's identifier), with raw control bytes.
    kazoo.create(lock + "/bbbb__lock__", b"\x1b[2Jid\r\n", ephemeral=True, sequence=True)
    return holder


def _run(runner, args, env=None):
    return run_runner(args, env=env, text=False, mark=runner.mark, timeout=60)


def _clean(result, *escaped):
    for stream in ("stdout", "stderr"):
        data = getattr(result, stream)
        assert _controls(data) == [], (stream, _controls(data), data)
    text = (result.stdout + result.stderr).decode("utf-8")
    for form in escaped:
        assert form in text, (form, text)
    return text


def test_status_and_the_runners_log_show_planted_contenders_escaped(runner, kazoo):
    root = runner.zk.root
    holder = _plant_contenders(kazoo, root, "evil")
    # A lock name ZooKeeper accepts but a terminal reorders.
    kazoo.ensure_path("%s/locks/evil\u202etxt" % root)

    listed = _run(runner, ["status"] + runner.conn())
    assert listed.returncode == 0, listed
    text = _clean(listed, "\\u001b[2J\\u001b[Hweb1\\r\\nzoo-locked: acquired name=forged", "\\u001b]0;owned\\u0007root",
                  "\\u007f\\u0085\\u202etxt.exe\\u001b[31m red", "pid=\"\\u001b[5m\"", "evil\\u202etxt")
    assert len(text.splitlines()) == 3, text  # held, waiting, free: no forged line

    one = _run(runner, ["status", "evil"] + runner.conn())
    assert one.returncode == 0 and one.stdout.decode().count("\n") == 2, one
    _clean(one, "\\u001b[2J")

    exact = _run(runner, ["status", "evil", "--json"] + runner.conn())
    assert exact.returncode == 0, exact
    _clean(exact)
    (lock,) = json.loads(exact.stdout)["locks"]
    shown = lock["holder"]
    assert (shown["host"], shown["pid"], shown["owner"], shown["purpose"]) == (
        holder["host"], holder["pid"], holder["owner"], holder["purpose"]), shown
    assert lock["waiters"][0]["identifier"] == "\x1b[2Jid\r\n"

    # The runner that finds the lock held names the holder in its log line: escaped too.
    marker = runner.path("ran")
    skipped = _run(runner, runner.run_args("evil", ["touch", marker], ()))
    assert skipped.returncode == 75, skipped
    log = _clean(skipped, "\\u001b[2J\\u001b[Hweb1\\r\\nzoo-locked: acquired name=forged", "\\u202etxt.exe")
    assert [line.split()[1] for line in log.splitlines()] == ["skipped"], log


def test_history_and_the_done_line_show_planted_records_escaped(runner, kazoo):
    root = runner.zk.root
    runs = "%s/runs/evil" % root
    kazoo.ensure_path(runs)
    attempt = {"host": EVIL_HOST, "pid": 1, "token": "\x1b[8m", "start": "x", "end": "\r\n", "exit": "\x1b[32m0",
               "duration": "\x7f", "state": EVIL_STATE}
    record = {"v": 1, "name": "evil", "slot": "s1\x1b[2J", "scheduled": None, "state": EVIL_STATE,
              "attempts": [attempt]}
    kazoo.create(runs + "/s1", json.dumps(record).encode())
    # Records of the wrong shapes: no crash, nothing raw.
    kazoo.create(runs + "/s2", json.dumps({"slot": "s2", "state": "failed", "attempts": 5}).encode())
    kazoo.create(runs + "/s3", json.dumps({"slot": "s3", "state": "failed", "attempts": ["\x1b[2J"]}).encode())
    kazoo.create(runs + "/s4", b"\x1b[2J not JSON\r\n")

    listed = _run(runner, ["history", "evil"] + runner.conn())
    assert listed.returncode == 0, listed
    text = _clean(listed, "s1\\u001b[2J", "succeeded\\r\\n\\u001b[1A\\u001b[2K", "\\u001b[2J\\u001b[Hweb1\\r\\n",
                  "exit=\"\\u001b[32m0\"", "duration=\"\\u007f\"", "token=\"\\u001b[8m\"")
    assert len(text.splitlines()) == 4, text

    exact = _run(runner, ["history", "evil", "--json"] + runner.conn())
    assert exact.returncode == 0, exact
    _clean(exact)
    by_slot = {r.get("slot"): r for r in json.loads(exact.stdout)["runs"]}
    assert by_slot["s1\x1b[2J"]["attempts"] == [attempt] and by_slot["s1\x1b[2J"]["state"] == EVIL_STATE

    # A slot whose record says it ran: the runner logs who ran it ("done ... record=...").
    kazoo.set(runs + "/s1", json.dumps(dict(record, state="succeeded")).encode())
    marker = runner.path("ran")
    done = _run(runner, runner.run_args("evil", ["touch", marker], ("--slot", "s1")))
    assert done.returncode == 0, done
    log = _clean(done, "succeeded by \\u001b[2J\\u001b[Hweb1\\r\\nzoo-locked: acquired name=forged")
    assert [line.split()[1] for line in log.splitlines()] == ["done"], log


def test_records_of_the_wrong_shape_are_unreadable_not_a_crash(runner, kazoo):
    """A record whose attempts are no list of mappings, or whose state is no string, is "unreadable": the runner
    neither crashes on it nor trusts it (with --retry-failed it runs the slot and writes a record of its own)."""
    runs = "%s/runs/odd" % runner.zk.root
    kazoo.ensure_path(runs)
    shapes = {"s1": {"slot": "s1", "state": "failed", "attempts": 5},
              "s2": {"slot": "s2", "state": "running", "attempts": ["\x1b[2J"]},
              "s3": {"slot": "s3", "state": ["running"], "attempts": []}}
    for slot, record in shapes.items():
        kazoo.create("%s/%s" % (runs, slot), json.dumps(record).encode())
    for slot in shapes:
        marker = runner.path("ran-" + slot)
        result = _run(runner, runner.run_args("odd", ["touch", marker], ("--slot", slot, "--retry-failed")))
        text = _clean(result)
        assert result.returncode == 0 and "Traceback" not in text and "internal error" not in text, text
        stored = json.loads(kazoo.get("%s/%s" % (runs, slot))[0])
        assert stored["state"] == "succeeded" and len(stored["attempts"]) == 1, stored
    shown = _run(runner, ["history", "odd"] + runner.conn())
    assert shown.returncode == 0 and shown.stdout.decode().count("succeeded") == 3, shown


def test_acl_lists_planted_acl_ids_escaped(runner, kazoo):
    auth = {"ZOO_LOCKED_AUTH": "digest:cluster:Acl-Pass-3c9"}
    assert runner.run("evil", ["true"]).returncode == 0  # a tree made without credentials: every node weak
    # An ACL id is whatever its author set.
    evil_acl = make_digest_acl("\x1b[2Jops\r\nforged", "pw", all=True)
    kazoo.create("%s/locks/evil/planted" % runner.zk.root, b"", acl=[evil_acl] + OPEN_ACL_UNSAFE)
    listed = _run(runner, ["acl"] + runner.conn(), env=auth)
    assert listed.returncode == 1, listed
    text = _clean(listed, "digest:\\x1b[2Jops\\r\\nforged")
    assert "/locks/evil/planted: " in text, text
    exact = _run(runner, ["acl", "--json"] + runner.conn(), env=auth)
    assert exact.returncode == 1, exact
    _clean(exact)
    problems = {w["path"]: w["problem"] for w in json.loads(exact.stdout)["weak"]}
    assert "\x1b[2Jops\r\nforged" in problems[runner.zk.root + "/locks/evil/planted"], problems
