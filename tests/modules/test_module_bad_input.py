# -*- coding: utf-8 -*-
"""Bad input to zoolocked.cron.lock and lock_info, through the real ansible-playbook against the real test
ZooKeeper: each task fails cleanly (a message naming the option and the fix, no traceback, no "MODULE
FAILURE") or changes nothing, no secret shows in the output (-vvv), and the ZooKeeper tree is the same
before and after, down to every node's data, child and ACL versions. Each case is a row of the bad-input
table in docs/reliability.md.

The cases run as tasks (each with ignore_errors and its own register) of four playbooks started at once, each
playbook with its own root under the test's root: the tree snapshot covers all of them, so an unchanged
tree proves every row of the run.
"""

import json
import os
import re
import subprocess

from kazoo.exceptions import NoNodeError

from zkharness import wait_for

LOCK = "zoolocked.cron.lock"
INFO = "zoolocked.cron.lock_info"

# Secrets handed to the modules: none may appear in ansible-playbook's output, even at -vvv.
RIGHT = "cluster:Right-Pass-5e1"
WRONG_PASSWORD = "Wrong-Pass-7a2"
MALFORMED = "OnlyAPassword-93c"
OTHER_SECRET = "Other-Secret-41d"
SECRETS = (RIGHT.split(":")[1], WRONG_PASSWORD, MALFORMED, OTHER_SECRET)

FAILED, UNCHANGED = "task failed", "ok, changed=false"


def case(playbook, label, module, args, words, outcome=FAILED):
    return {"playbook": playbook, "label": label, "module": module, "args": args, "words": words,
            "outcome": outcome}


# {tmp}, {root} and {hosts} in string arguments are filled in by the test.
CASES = [
    # --- the lock's own options (refused before connecting) ---------------------------------------------
    case(1, "unknown option", LOCK, {"name": "invoice", "colour": "red"},
         ["Unsupported parameters", "colour", "Supported parameters include"]),
    case(1, "bad state", LOCK, {"name": "invoice", "state": "locked"},
         ["state must be one of", "acquired, released", "locked"]),
    case(1, "lock name with /", LOCK, {"name": "a/b"}, ["option name", "bad lock name", "A-Z a-z 0-9 . _ -"]),
    case(1, "lock name ..", LOCK, {"name": ".."}, ["option name", "bad lock name", "not starting with '.'"]),
    case(1, "lock name with unicode", LOCK, {"name": "rechnung-\u20ac"}, ["option name", "bad lock name"]),
    case(1, "lock name of 1000 characters", LOCK, {"name": "x" * 1000}, ["option name", "1-100 characters"]),
    case(1, "empty lock name", LOCK, {"name": ""}, ["option name", "bad lock name"]),
    case(1, "negative wait", LOCK, {"name": "invoice", "wait": -5}, ["option wait", "at least 0 seconds"]),
    case(1, "wait nan", LOCK, {"name": "invoice", "wait": "nan"}, ["option wait", "finite number of seconds"]),
    case(1, "wait not a number", LOCK, {"name": "invoice", "wait": "soon"}, ["'wait'", "float"]),
    case(1, "absurd lease (1e12 s)", LOCK, {"name": "invoice", "lease": 1e12}, ["option lease", "at most", "31 days"]),
    case(1, "zero lease", LOCK, {"name": "invoice", "lease": 0}, ["option lease", "more than 0 seconds"]),
    case(1, "force with state=acquired", LOCK, {"name": "invoice", "force": True},
         ["option force", "only to state=released"]),
    case(1, "owner with a newline", LOCK, {"name": "invoice", "owner": "ops\nroot"},
         ["option owner", "control characters", "one line"]),
    case(1, "purpose of 1.1 MB", LOCK, {"name": "invoice", "purpose": "p" * 1100000},
         ["option purpose", "at most 1000 characters", "shorten"]),
    case(1, "lock_info: unknown option", INFO, {"name": "invoice"}, ["Unsupported parameters", "name", "names"]),
    case(1, "lock_info: name ..", INFO, {"names": ["invoice", ".."]}, ["option names", "bad lock name"]),
    case(1, "lock_info: negative runs", INFO, {"runs": -1}, ["option runs", "0 or more"]),
    # --- connection settings (refused before connecting) -----------------------------------------------
    case(2, "absurd session_timeout", LOCK, {"name": "invoice", "session_timeout": 1e9},
         ["option session_timeout", "between 1 and 600"]),
    case(2, "connect_timeout 0", INFO, {"connect_timeout": 0}, ["option connect_timeout", "between 0.1 and 600"]),
    case(2, "hosts not HOST[:PORT]", LOCK, {"name": "invoice", "hosts": "zk1 zk2"},
         ["option hosts", "HOST[:PORT]", "comma-separated"]),
    case(2, "port out of range", INFO, {"hosts": "127.0.0.1:99999"}, ["option hosts", "HOST[:PORT]"]),
    case(2, "relative root", LOCK, {"name": "invoice", "root": "zoo-locked"}, ["option root", "absolute"]),
    case(2, "root with ..", INFO, {"root": "{root}/../other"}, ["option root", "no . or .."]),
    case(2, "root with a trailing /", LOCK, {"name": "invoice", "root": "{root}/"},
         ["option root", "no trailing slash"]),
    case(2, "config file missing", LOCK, {"name": "invoice", "config": "/nonexistent/zoo-locked.conf"},
         ["config file /nonexistent/zoo-locked.conf", "cannot read"]),
    case(2, "config file is a directory", INFO, {"config": "{tmp}"}, ["config file", "cannot read", "directory"]),
    case(2, "config file not INI", LOCK, {"name": "invoice", "config": "{tmp}/not-ini.conf"},
         ["not-ini.conf", "not a valid INI file"]),
    case(2, "config file with an unknown key", INFO, {"config": "{tmp}/unknown-key.conf"},
         ["unknown key 'host'", "known keys"]),
    case(2, "TLS CA file missing", LOCK, {"name": "invoice", "tls": True, "tls_ca_cert": "/nonexistent/ca.pem"},
         ["option tls_ca_cert", "/nonexistent/ca.pem", "not a readable file"]),
    case(2, "TLS CA file not PEM", INFO, {"tls": True, "tls_ca_cert": "{tmp}/not-ini.conf"},
         ["tls_ca_cert", "not a PEM CA certificate"]),
    case(2, "TLS client key without its certificate", LOCK,
         {"name": "invoice", "tls": True, "tls_client_key": "{tmp}/key1.pem"},
         ["tls_client_key", "set tls_client_cert too"]),
    case(2, "TLS client certificate with another key", INFO,
         {"tls": True, "tls_client_cert": "{tmp}/cert1.pem", "tls_client_key": "{tmp}/key2.pem"},
         ["tls_client_cert", "key must belong to the certificate"]),
    case(2, "auth credential not USER:PASSWORD", LOCK,
         {"name": "invoice", "auth": [{"scheme": "digest", "credential": MALFORMED}]},
         ["option auth[0]", "digest:USER:PASSWORD", "not shown"]),
    case(2, "sasl credential not USER:PASSWORD", INFO,
         {"auth": [{"scheme": "sasl", "credential": MALFORMED}]},
         ["option auth[0] (scheme sasl)", "sasl:USER:PASSWORD", "not shown"]),
    case(2, "auth scheme the servers do not know", INFO,
         {"auth": [{"scheme": "bogus", "credential": "u:" + OTHER_SECRET}]},
         ["refused", "set auth (digest:USER:PASSWORD or sasl:USER:PASSWORD)"]),
    case(2, "auth not a list of scheme/credential", LOCK, {"name": "invoice", "auth": "digest:u:p"},
         ["dictionary requested"]),
    # --- ZooKeeper reachable, or not ----------------------------------------------------------------------
    case(3, "unreachable ZooKeeper (port 1)", LOCK, {"name": "invoice", "hosts": "127.0.0.1:1", "connect_timeout": 1},
         ["no ZooKeeper server of 127.0.0.1:1", "connect timeout"]),
    case(3, "unknown ZooKeeper host name", INFO, {"hosts": "zk.invalid:2181", "connect_timeout": 1},
         ["no ZooKeeper server of zk.invalid:2181", "connect timeout"]),
    case(3, "release of a lock held by someone else", LOCK, {"name": "invoice", "state": "released"},
         ["not held by", "held by cron-invoice"], outcome=UNCHANGED),
    case(3, "root below an ephemeral node", LOCK, {"name": "invoice", "root": "{root}/ephemeral/zl"},
         ["ephemeral"]),
    # --- credentials --------------------------------------------------------------------------------------
    case(4, "wrong password, acquire", LOCK,
         {"name": "report", "auth": [{"credential": "cluster:" + WRONG_PASSWORD}]},
         ["NoAuth", "check the user and password"]),
    case(4, "wrong password, force release of the cluster's lock", LOCK,
         {"name": "invoice", "state": "released", "force": True,
          "auth": [{"credential": "cluster:" + WRONG_PASSWORD}]},
         ["NoAuth", "check the user and password"]),
    case(4, "wrong SASL password, acquire", LOCK,
         {"name": "report", "auth": [{"scheme": "sasl", "credential": "cluster:" + WRONG_PASSWORD}]},
         ["refused the credentials", "JAAS Server section"]),
    case(4, "no credentials, acquire under a secured root", LOCK, {"name": "report"},
         ["NoAuth", "set auth (digest:USER:PASSWORD or sasl:USER:PASSWORD)"]),
]


def _tree(kazoo, path):
    """Every node under PATH with the versions that any change moves (data, children, ACL, last writer)."""
    try:
        data, stat = kazoo.get(path)
        children = kazoo.get_children(path)
    except NoNodeError:
        return []
    result = [(path, stat.version, stat.cversion, stat.aversion, stat.mzxid, stat.pzxid, len(data))]
    for child in sorted(children):
        result += _tree(kazoo, path + "/" + child)
    return result


def _fill(value, subst):
    if isinstance(value, str):
        for key, text in subst.items():
            value = value.replace("{%s}" % key, text)
        return value
    if isinstance(value, list):
        return [_fill(v, subst) for v in value]
    if isinstance(value, dict):
        return {k: _fill(v, subst) for k, v in value.items()}
    return value


def _shown(module, args):
    parts = []
    for key, value in args.items():
        text = json.dumps(value, ensure_ascii=False) if not isinstance(value, str) else value
        if key == "auth":
            text = "[credential hidden]" if isinstance(value, list) else text
        text = text.replace("\n", "\\n")
        if len(text) > 40:
            text = text[:12] + "…(%d chars)" % len(text)
        parts.append("%s=%s" % (key, text))
    return "`%s %s`" % (module.rsplit(".", 1)[1], " ".join(parts))


def _stable(message, tmp, root):
    """The message as the table shows it: the same from run to run (no temporary paths, pids, times, tokens)."""
    message = message.replace(tmp, "{tmp}").replace(root, "{root}")
    message = re.sub(r"ansible-playbook:[^@\s]+@[^:\s]+:\d+", "ansible-playbook:USER@HOST:PID", message)
    message = re.sub(r"host [^,\s]+, pid \d+", "host HOST, pid PID", message)
    message = re.sub(r"since \S+Z, token \d+", "since TIME, token TOKEN", message)
    message = re.sub(r"[0-9a-f]{32}__lock__[0-9]+", "NODE", message)
    return message


def _tls_files(tmp):
    for stem in ("1", "2"):
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                        "-nodes", "-keyout", os.path.join(tmp, "key%s.pem" % stem),
                        "-out", os.path.join(tmp, "cert%s.pem" % stem), "-subj", "/CN=zoo-locked-test",
                        "-days", "1"], check=True, capture_output=True)


def test_module_bad_input(ansible, runner, kazoo, zk, tmp_path, bad_input_table):
    tmp = str(tmp_path)
    with open(os.path.join(tmp, "not-ini.conf"), "w") as handle:
        handle.write("this is not\n= an ini file\n")
    with open(os.path.join(tmp, "unknown-key.conf"), "w") as handle:
        handle.write("[zoo-locked]\nhost = zk1\n")
    _tls_files(tmp)
    roots = {n: "%s/p%d" % (zk.root, n) for n in (1, 2, 3, 4)}
    for root in roots.values():
        kazoo.ensure_path(root + "/locks")

    # Playbook 3: a cron job holds invoice; a node that is ephemeral. Playbook 4: the root belongs to the
    # cluster's identity (the runner created it with ZOO_LOCKED_AUTH), and its job holds invoice.
    held = []
    for n, env in ((3, {}), (4, {"ZOO_LOCKED_AUTH": "digest:" + RIGHT})):
        ready, until = runner.path("ready"), runner.path("until")
        runner.start("invoice", runner.worker(ready=ready, until=until), "--owner", "cron-invoice",
                     "--purpose", "nightly invoice run", root=roots[n] + ("/secured" if n == 4 else ""), env=env)
        held.append(until)
        wait_for(lambda r=ready: os.path.exists(r), 20, message="the cron job of playbook %d to start" % n)
    roots[4] += "/secured"
    kazoo.create(roots[3] + "/ephemeral", ephemeral=True)

    before = _tree(kazoo, zk.root)
    assert len(before) > 8, before
    runs = {}
    for n in (1, 2, 3, 4):
        tasks, keep = [], []
        for i, c in enumerate(CASES):
            if c["playbook"] != n:
                continue
            args = _fill(c["args"], {"tmp": tmp, "root": roots[n], "hosts": zk.hosts})
            tasks.append({"name": c["label"], c["module"]: args, "register": "case%d" % i, "ignore_errors": True})
            keep.append("case%d" % i)
        # Pipelining: one process per task instead of several (temporary directory, copy, run, clean up).
        runs[n] = ansible.start(tasks, keep, args=["-vvv"], env={"ZOO_LOCKED_ROOT": roots[n], "ANSIBLE_PIPELINING": "1"})
    done = {n: run.wait(120) for n, run in runs.items()}
    print("playbooks: %s" % ", ".join("%d: %d tasks in %.1fs" % (n, sum(c["playbook"] == n for c in CASES), r.elapsed)
                                      for n, r in done.items()))
    after = _tree(kazoo, zk.root)

    problems = []
    for n, result in done.items():
        if result.returncode != 0:
            problems.append("playbook %d: rc %s\n%s" % (n, result.returncode, result.output[-3000:]))
        for marker in ("Traceback", "MODULE FAILURE", "module_stderr") + SECRETS:
            if marker in result.output:
                problems.append("playbook %d: %r in the output" % (n, marker))
    assert after == before, sorted(set(after) ^ set(before))
    assert not problems, "\n".join(problems)

    for i, c in enumerate(CASES):
        got = done[c["playbook"]]["case%d" % i]
        assert got, (c["label"], done[c["playbook"]])
        message = got.get("msg") or ""
        shown = json.dumps(got, ensure_ascii=False)
        for secret in SECRETS:
            assert secret not in shown, (c["label"], secret)
        # Ansible adds "exception": "(traceback unavailable)" to any failure at -vvv; a crash has a real one.
        assert "Traceback" not in got.get("exception", "") and "module_stderr" not in got, (c["label"], got)
        if c["outcome"] == FAILED:
            assert got.get("failed") is True, (c["label"], got)
        else:
            assert not got.get("failed"), (c["label"], got)
            assert got.get("changed") is False, (c["label"], got)
        for word in c["words"]:
            assert word in message, (c["label"], word, message)
        bad_input_table.add("module", "%s: %s" % (c["label"], _shown(c["module"], c["args"])), c["outcome"],
                            _stable(message, tmp, roots[c["playbook"]]),
                            "ZooKeeper tree unchanged (%d nodes; data, child, ACL versions); no traceback; no "
                            "secret at -vvv" % len(before))

    # The jobs that held invoice were never disturbed: they still hold it, and end normally.
    for until in held:
        with open(until, "w"):
            pass
    for bg in runner.background:
        assert bg.wait(20).returncode == 0, bg
