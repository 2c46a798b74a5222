"""Bad input to the runner: a clear message naming the field and the fix, the documented exit code, and
nothing changed in ZooKeeper or run. Each case is a row of the table in docs/reliability.md."""

import os

import pytest
from kazoo.exceptions import NoNodeError

LONG = "x" * 1000

# (label, extra args before --, command, env, config file text or None, exit code, words the message has)
CASES = [
    ("unknown option", ["--bogus"], ["true"], {}, None, 64, ["unknown option --bogus", "--help"]),
    ("negative --wait", ["--wait", "-5"], ["true"], {}, None, 64, ["--wait", "from 0 to"]),
    ("absurd --timeout", ["--timeout", "1e12"], ["true"], {}, None, 64, ["--timeout", "at most"]),
    ("zero --timeout", ["--timeout", "0"], ["true"], {}, None, 64, ["--timeout", "greater than 0"]),
    ("--kill-after not a number", ["--kill-after", "soon"], ["true"], {}, None, 64, ["--kill-after", "'soon'"]),
    ("--wait nan", ["--wait", "nan"], ["true"], {}, None, 64, ["--wait"]),
    ("option without its value", ["--wait"], ["true"], {}, None, 64, ["--wait needs a value"]),
    ("--owner over two lines", ["--owner", "ops\nroot"], ["true"], {}, None, 64, ["--owner", "one line"]),
    ("--purpose of 5000 characters", ["--purpose", "p" * 5000], ["true"], {}, None, 64,
     ["--purpose", "at most 1000 characters"]),
    ("lock name with /", "name:a/b", ["true"], {}, None, 64, ["bad lock name", "A-Z a-z 0-9 . _ -"]),
    ("lock name ..", "name:..", ["true"], {}, None, 64, ["bad lock name"]),
    ("lock name starting with .", "name:.hidden", ["true"], {}, None, 64, ["not starting with '.'"]),
    ("lock name with unicode", "name:rechnung-\u20ac", ["true"], {}, None, 64, ["bad lock name"]),
    ("lock name of 1000 characters", "name:" + LONG, ["true"], {}, None, 64, ["bad lock name", "1-100"]),
    ("empty lock name", "name:", ["true"], {}, None, 64, ["bad lock name"]),
    ("two lock names", ["extra-name"], ["true"], {}, None, 64, ["exactly one lock NAME"]),
    ("empty command", [], [], {}, None, 64, ["no COMMAND after '--'"]),
    ("missing --", "no-dashdash", None, {}, None, 64, ["missing '--' before COMMAND"]),
    ("command not found", [], ["no-such-command-zl"], {}, None, 127, ["command not found", "no-such-command-zl"]),
    ("command not executable", "not-executable", None, {}, None, 126, ["not executable", "data.txt"]),
    ("port out of range", ["--hosts", "zk1:99999"], ["true"], {}, None, 64, ["--hosts", "HOST[:PORT]"]),
    ("empty --hosts", ["--hosts", ""], ["true"], {}, None, 64, ["--hosts"]),
    ("relative --root", ["--root", "zoo-locked"], ["true"], {}, None, 64, ["--root", "absolute"]),
    ("--root with ..", ["--root", "/a/../b"], ["true"], {}, None, 64, ["--root", "no . or .."]),
    ("--root with a trailing /", ["--root", "/zl/"], ["true"], {}, None, 64, ["--root", "no trailing slash"]),
    ("session timeout below 1 s", ["--session-timeout", "0.1"], ["true"], {}, None, 64,
     ["--session-timeout", "between 1 and 600"]),
    ("bad --schedule", ["--schedule", "61 * * * *"], ["true"], {}, None, 64, ["bad schedule", "five cron fields"]),
    ("--slot with /", ["--slot", "a/b"], ["true"], {}, None, 64, ["bad slot id"]),
    ("--slot and --schedule", ["--slot", "a", "--schedule", "@hourly"], ["true"], {}, None, 64,
     ["exclude each other"]),
    ("--keep 0", ["--slot", "a", "--keep", "0"], ["true"], {}, None, 64, ["--keep", "1 to 100000"]),
    ("--retry-failed without a slot", ["--retry-failed"], ["true"], {}, None, 64, ["needs --schedule or --slot"]),
    ("ZOO_LOCKED_SESSION_TIMEOUT=abc", [], ["true"], {"ZOO_LOCKED_SESSION_TIMEOUT": "abc"}, None, 78,
     ["ZOO_LOCKED_SESSION_TIMEOUT", "number of seconds"]),
    ("ZOO_LOCKED_HOSTS with spaces", "no-conn", ["true"], {"ZOO_LOCKED_HOSTS": "not a host!"}, None, 78,
     ["ZOO_LOCKED_HOSTS", "HOST[:PORT]"]),
    ("ZOO_LOCKED_ROOT relative", "no-conn", ["true"], {"ZOO_LOCKED_ROOT": "relative/path"}, None, 78,
     ["ZOO_LOCKED_ROOT", "absolute"]),
    ("ZOO_LOCKED_AUTH without a password", [], ["true"], {"ZOO_LOCKED_AUTH": "digest:user"}, None, 78,
     ["ZOO_LOCKED_AUTH", "digest:USER:PASSWORD"]),
    ("ZOO_LOCKED_AUTH sasl without a password", [], ["true"], {"ZOO_LOCKED_AUTH": "sasl:cluster"}, None, 78,
     ["ZOO_LOCKED_AUTH", "sasl:USER:PASSWORD"]),
    ("ZOO_LOCKED_AUTH with an unknown scheme", [], ["true"], {"ZOO_LOCKED_AUTH": "kerberos:cluster:pw"}, None, 78,
     ["ZOO_LOCKED_AUTH", "digest:USER:PASSWORD or sasl:USER:PASSWORD"]),
    ("ZOO_LOCKED_AUTH with a wrong SASL password", [], ["true"], {"ZOO_LOCKED_AUTH": "sasl:cluster:Wrong-Pass-3f1"},
     None, 78, ["refused the credentials", "JAAS Server section"]),
    ("ZOO_LOCKED_CONFIG names a missing file", [], ["true"], {"ZOO_LOCKED_CONFIG": "/nonexistent/zl.conf"}, None,
     78, ["/nonexistent/zl.conf", "cannot read"]),
    ("config file not INI", "config", ["true"], {}, "this is not\n= an ini file\n", 78, ["not a valid INI file"]),
    ("config file with an unknown key", "config", ["true"], {}, "[zoo-locked]\nhost = zk1\n", 78,
     ["unknown key 'host'", "known keys"]),
    ("config file without the section", "config", ["true"], {}, "[main]\nhosts = zk1\n", 78,
     ["exactly one section [zoo-locked]"]),
    ("config file with a bad timeout", "config", ["true"], {}, "[zoo-locked]\nsession_timeout = -3\n", 78,
     ["session_timeout", "between 1 and 600"]),
    ("config file: TLS CA file missing", "config", ["true"], {},
     "[zoo-locked]\ntls = true\ntls_ca_cert = /nonexistent/ca.pem\n", 78, ["tls_ca_cert", "not a readable file"]),
    ("config file: tls = maybe", "config", ["true"], {}, "[zoo-locked]\ntls = maybe\n", 78, ["true or false"]),
    ("config file: credentials readable by others", "config-0644", ["true"], {},
     "[zoo-locked]\nauth = digest:cluster:pw\n", 78, ["chmod o-rwx"]),
    ("config file: relative metrics_dir", "config", ["true"], {}, "[zoo-locked]\nmetrics_dir = metrics\n", 78,
     ["metrics_dir", "absolute"]),
    ("config file: metrics_dir with a control character", "config", ["true"], {},
     "[zoo-locked]\nmetrics_dir = /var/lib/zl\x1b[2Jmetrics\n", 78, ["metrics_dir", "without control characters"]),
    ("config file is a directory", "config-dir", ["true"], {}, "", 78, ["cannot read"]),
    ("ZooKeeper unreachable", "unreachable", ["true"], {}, None, 69, ["no ZooKeeper server", "connect timeout"]),
    ("root below an ephemeral node", "ephemeral-root", ["true"], {}, None, 78, ["ephemeral", "persistent"]),
]


def _tree(kazoo, path):
    try:
        children = kazoo.get_children(path)
    except NoNodeError:
        return []
    result = [path]
    for child in children:
        result += _tree(kazoo, path + "/" + child)
    return result


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input(runner, kazoo, tmp_path, bad_input_table, case):
    label, extra, command, env, config_text, code, words = case
    marker = runner.path("ran")
    root = runner.zk.root
    kazoo.ensure_path(root + "/locks")  # an existing tree, to prove nothing in it changes
    name = "invoices"
    args = ["run"]
    conn = runner.conn()
    if isinstance(extra, str):
        kind, dummy_sep, value = extra.partition(":")
        extra = []
        if kind == "name":
            name = value
        elif kind == "no-dashdash":
            command = None
        elif kind == "no-conn":
            conn = []
        elif kind.startswith("config"):
            path = tmp_path / "zoo-locked.conf"
            if kind == "config-dir":
                path.mkdir()
            else:
                path.write_text(config_text)
                path.chmod(0o644 if kind == "config-0644" else 0o600)
            extra = ["--config", str(path)]
        elif kind == "not-executable":
            command = [str(tmp_path / "data.txt")]
            (tmp_path / "data.txt").write_text("not a program\n")
            (tmp_path / "data.txt").chmod(0o644)
            extra = []
        elif kind == "unreachable":
            conn = ["--hosts", "127.0.0.1:1", "--root", root, "--connect-timeout", "1"]
        elif kind == "ephemeral-root":
            kazoo.create(root + "/ephemeral", ephemeral=True)
            conn = ["--hosts", runner.zk.hosts, "--root", root + "/ephemeral/zl"]
    before = _tree(kazoo, root)
    argv = args + [name] + conn + extra + (["--"] + command if command is not None else ["true"])
    if label == "missing --":
        argv = args + [name] + conn + ["true"]
    result = runner.raw(argv, env=env)
    assert result.returncode == code, (label, result)
    for word in words:
        assert word in result.stderr, (label, word, result.stderr)
    assert "Traceback" not in result.stderr
    assert not os.path.exists(marker)
    after = _tree(kazoo, root)
    assert after == before, (label, sorted(set(after) ^ set(before)))
    message = result.stderr.replace("zoo-locked: ", "", 1)
    shown = " ".join(a if len(a) <= 40 else a[:20] + "…(%d chars)" % len(a) for a in argv if a not in conn)
    if env:
        shown = " ".join("%s=%s" % kv for kv in env.items()) + " " + shown
    if config_text is not None:
        shown += " (config: %s)" % " / ".join(config_text.strip().splitlines()) if config_text else " (config path is a directory)"
    bad_input_table.add("runner", "%s: `zoo-locked %s`" % (label, shown), "exit %d" % code, message,
                        "ZooKeeper tree under the root unchanged (%d nodes); COMMAND not run" % len(before))
