# -*- coding: utf-8 -*-
"""Security checks of the Molecule cluster with auth and TLS on (issue 7), run on the hosts by verify_security.yml.

  scan      Reads {"LABEL": "SECRET", ...} as JSON on stdin and looks for each secret in the process list, in
            /etc/cron.d/zoo-locked, under /var/log and /shared, and in the files given. With --probe NAME it first
            starts `zoo-locked run NAME` (with --verbose, so kazoo logs too) and takes the process list while the
            job runs, then scans the job's stdout and stderr. --modes PATH:MODE:OWNER:GROUP checks files' owners.
  intruder  On a cron node, with the node's virtualenv Python: a client with TLS (and the node's client
            certificate) but without credentials must not create, delete or change anything in the lock tree;
            plain text to the TLS port and TLS without a client certificate must not connect. Positive controls
            prove that the same calls work with the credentials, so a failure means what it says.
  sasl      On a cron node: the runner with SASL credentials (JSON {"user", "password"} on stdin) under its own
            root works, leaves ACLs for sasl:USER only, and a wrong SASL password or the digest identity is refused.
Prints one JSON object with "problems" (empty when all is well) and what was checked; never a secret.
"""

from __future__ import absolute_import, division, print_function

import argparse
import grp
import json
import os
import pwd
import subprocess
import sys
import threading
import time

CODE = "/opt/zoo-locked/lib/zoo-locked"


def wait_for(what, predicate, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError("timed out after %gs waiting for %s" % (timeout, what))


# ---------------------------------------------------------------------------------------------------- scan
def children_of(pid):
    try:
        with open("/proc/%d/task/%d/children" % (pid, pid)) as handle:
            return handle.read().split()
    except OSError:
        return []


def scan(args):
    secrets = {label: value for label, value in json.load(sys.stdin).items() if value}
    problems, checked = [], {}
    texts = {}  # where -> bytes

    if args.probe:
        out, err = "/tmp/zl-security-probe.out", "/tmp/zl-security-probe.err"
        with open(out, "wb") as stdout, open(err, "wb") as stderr:
            probe = subprocess.Popen(
                ["/usr/local/bin/zoo-locked", "run", args.probe, "--verbose", "--wait", "30", "--", "sleep", "3"],
                stdout=stdout, stderr=stderr)
            # The runner starts the command only once it holds the lock: then the job is really running.
            try:
                wait_for("the probe job to start its command", lambda: children_of(probe.pid) or probe.poll() is not None)
                texts["ps -efww while a job runs"] = subprocess.run(
                    ["ps", "-efww"], stdout=subprocess.PIPE, check=True).stdout
                if probe.poll() is not None:
                    problems.append("the probe job ended before its command ran (exit %s)" % probe.returncode)
                elif ("zoo-locked run %s" % args.probe).encode() not in texts["ps -efww while a job runs"]:
                    problems.append("the process list taken during the probe job does not show it")
            finally:
                code = probe.wait(timeout=60)
        if code != 0:
            problems.append("the probe job `zoo-locked run %s` exited %s" % (args.probe, code))
        for path in (out, err):
            with open(path, "rb") as handle:
                texts["the job's " + os.path.basename(path)] = handle.read()
        checked["probe exit code"] = code
    elif not args.only:
        texts["ps -efww"] = subprocess.run(["ps", "-efww"], stdout=subprocess.PIPE, check=True).stdout

    paths = list(args.files)
    for top in () if args.only else ("/etc/cron.d/zoo-locked", "/var/log", "/shared"):
        if os.path.isfile(top):
            paths.append(top)
        for base, dummy_dirs, files in os.walk(top):
            paths.extend(os.path.join(base, name) for name in files)
    for path in paths:
        try:
            with open(path, "rb") as handle:
                texts[path] = handle.read(50 * 1024 * 1024)
        except OSError as exc:
            problems.append("cannot read %s: %s" % (path, exc))
    for where, text in texts.items():
        for label, secret in secrets.items():
            if secret.encode() in text:
                problems.append("%s appears in %s" % (label, where))
    checked["places scanned"] = sorted(texts)
    checked["secrets looked for"] = sorted(secrets)

    for spec in args.modes:
        path, mode, owner, group = spec.split(":")
        try:
            st = os.stat(path)
        except OSError as exc:
            problems.append("%s: %s" % (path, exc))
            continue
        found = "%04o:%s:%s" % (st.st_mode & 0o7777, pwd.getpwuid(st.st_uid).pw_name, grp.getgrgid(st.st_gid).gr_name)
        if found != ":".join((mode, owner, group)):
            problems.append("%s is %s, expected %s:%s:%s" % (path, found, mode, owner, group))
    checked["modes"] = args.modes
    return problems, checked


# ----------------------------------------------------------------------------------------------- intruder
def intruder(args):
    sys.path.insert(0, CODE)
    from kazoo.exceptions import NoAuthError
    from kazoo.security import OPEN_ACL_UNSAFE
    from zoo_locked import _config, _zk  # the runner's own settings and connection helper

    _zk.quiet_kazoo()  # kazoo would log every refused connection attempt
    settings = _config.resolve({})
    root, hosts = settings["root"], settings["hosts"]
    tls = _zk.tls_options(settings)
    problems, checked = [], []
    if not settings["auth"] or not tls or not tls["certfile"]:
        return ["the node's configuration lacks auth, TLS or a client certificate: %s" % settings["config"]], []

    def session(auth=None, tls_options=tls, on_hosts=hosts, connect_timeout=10.0):
        zk = _zk.Session(on_hosts, 10.0, connect_timeout, auth=auth, tls=tls_options)
        zk.start()
        return zk

    member = session(auth=settings["auth"])
    stranger = session()  # TLS and the node's certificate, but no credentials
    wrong_password = session(auth=[("digest", _zk.identity(settings["auth"])[1] + ":not-the-password")])

    # A real job holds a lock and leaves a run record (--slot), as cron's jobs do.
    lock = "%s/locks/%s" % (root, args.lock)
    slot = "sec-%d" % time.time()
    record = "%s/runs/%s/%s" % (root, args.lock, slot)
    job = subprocess.Popen(["/usr/local/bin/zoo-locked", "run", args.lock, "--slot", slot, "--wait", "30", "--",
                            "sleep", "4"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    contender = wait_for("the probe job to hold its lock", lambda: (
        member.client.exists(lock) and member.client.get_children(lock)))[0]

    def attempt(what, zk, call):
        try:
            call(zk.client).get(timeout=15)
        except NoAuthError:
            checked.append("refused (NoAuth): " + what)
            return
        except Exception as exc:  # anything else is not the proof asked for
            problems.append("%s: expected NoAuth, got %s: %s" % (what, type(exc).__name__, exc))
            return
        problems.append("%s: ALLOWED without credentials" % what)

    held = "%s/%s" % (lock, contender)
    attempt("delete the contender node of a running job " + held, stranger, lambda c: c.delete_async(held))
    attempt("change the data of the running job's contender node", stranger, lambda c: c.set_async(held, b"x"))
    attempt("queue a contender under the held lock " + lock, stranger,
            lambda c: c.create_async(lock + "/intruder__lock__", b"x", ephemeral=True, sequence=True))
    output = job.communicate(timeout=60)[0]
    if job.returncode != 0:
        problems.append("the probe job exited %s: %s" % (job.returncode, output.decode("utf-8", "replace")))
    if not member.client.exists(record):
        problems.append("the probe job left no run record at %s" % record)

    for who, zk in (("without credentials", stranger), ("with a wrong password", wrong_password)):
        attempt("create a child under the root %s (%s)" % (root, who), zk,
                lambda c: c.create_async(root + "/intruder", b"x"))
        attempt("create a lock node %s/locks/intruder (%s)" % (root, who), zk,
                lambda c: c.create_async(root + "/locks/intruder", b"x"))
        attempt("create a child under the lock node %s (%s)" % (lock, who), zk,
                lambda c: c.create_async(lock + "/intruder", b"x"))
        attempt("create a run record %s/runs/%s/intruder (%s)" % (root, args.lock, who), zk,
                lambda c: c.create_async("%s/runs/%s/intruder" % (root, args.lock), b"x"))
        attempt("delete the run record %s (%s)" % (record, who), zk, lambda c: c.delete_async(record))
        attempt("delete the lock node %s (%s)" % (lock, who), zk, lambda c: c.delete_async(lock))
        attempt("delete %s/locks (%s)" % (root, who), zk, lambda c: c.delete_async(root + "/locks"))
        for path in (root, lock, record):
            attempt("set data on %s (%s)" % (path, who), zk, lambda c, p=path: c.set_async(p, b"x"))
            attempt("set an open ACL on %s (%s)" % (path, who), zk,
                    lambda c, p=path: c.set_acls_async(p, OPEN_ACL_UNSAFE))

    # Positive controls: a stranger may read; the member may do what the stranger may not.
    try:
        stranger.client.get_children(root)
        checked.append("allowed: a client without credentials reads %s" % root)
    except Exception as exc:
        problems.append("a client without credentials cannot read %s (%s): world READ is expected" % (root, exc))
    try:
        probe = root + "/zl-security-control"
        member.client.create(probe, b"x")
        member.client.set(probe, b"y")
        member.client.delete(probe)
        member.client.set(record, member.client.get(record)[0])
        checked.append("allowed: the cluster's identity creates, changes and deletes under %s" % root)
    except Exception as exc:
        problems.append("the cluster's identity could not create, change or delete under %s: %s" % (root, exc))
    for path in (root, lock, record):
        if not member.client.exists(path):
            problems.append("%s is gone" % path)
    for zk in (member, stranger, wrong_password):
        zk.close()

    # Connections that must fail, each with a positive control above (the stranger's TLS session connected).
    plain = ",".join("%s:%s" % (h.rsplit(":", 1)[0], args.plain_port) for h in hosts.split(","))
    refused = {
        "plain text to the TLS port (%s)" % hosts: dict(tls_options=None),
        "TLS without a client certificate (%s)" % hosts: dict(tls_options=dict(tls, certfile=None, keyfile=None,
                                                                               keyfile_password=None)),
        "plain text to the plain client port (%s), which TLS closes" % plain: dict(tls_options=None, on_hosts=plain),
    }
    results = {}

    def connect(what, kwargs):
        try:
            session(connect_timeout=4.0, **kwargs).close()
            results[what] = "CONNECTED"
        except _zk.ZooUnavailable:
            results[what] = "refused"
        except Exception as exc:
            results[what] = "%s: %s" % (type(exc).__name__, exc)

    threads = [threading.Thread(target=connect, args=item) for item in refused.items()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for what, result in sorted(results.items()):
        if result == "refused":
            checked.append("refused: " + what)
        else:
            problems.append("%s: expected no connection, got %s" % (what, result))
    return problems, checked


# ---------------------------------------------------------------------------------------------------- sasl
def sasl(args):
    """The runner with SASL credentials (sasl:USER:PASSWORD, from stdin) under its own root, over TLS.

    The servers know USER from their JAAS section (the zookeeper role's zookeeper_sasl_users). The runner must
    run a job there and leave a tree whose ACL admits only sasl:USER; the cluster's digest identity and a wrong
    SASL password must get nowhere.
    """
    sys.path.insert(0, CODE)
    from kazoo.exceptions import NoAuthError
    from zoo_locked import _config, _zk

    _zk.quiet_kazoo()
    given = json.load(sys.stdin)
    user, password = given["user"], given["password"]
    settings = _config.resolve({})
    root, hosts, tls = args.root, settings["hosts"], _zk.tls_options(settings)
    problems, checked = [], []
    env = dict(os.environ, ZOO_LOCKED_ROOT=root, ZOO_LOCKED_AUTH="sasl:%s:%s" % (user, password))
    slot = "sasl-%d" % time.time()
    run = subprocess.run(["/usr/local/bin/zoo-locked", "run", args.lock, "--slot", slot, "--", "true"], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=60, check=False)
    if run.returncode != 0:
        problems.append("the runner with SASL credentials exited %s: %s" % (run.returncode, run.stdout.decode()))
    else:
        checked.append("the runner ran a job with sasl:%s under %s" % (user, root))
    wrong = subprocess.run(["/usr/local/bin/zoo-locked", "run", args.lock, "--", "true"],
                           env=dict(env, ZOO_LOCKED_AUTH="sasl:%s:not-the-password" % user),
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=60, check=False)
    if wrong.returncode != 78 or b"refused the credentials" not in wrong.stdout:
        problems.append("a wrong SASL password: expected exit 78 (refused the credentials), got %s: %s"
                        % (wrong.returncode, wrong.stdout.decode()))
    else:
        checked.append("refused at login (exit 78): a wrong SASL password")

    digest = _zk.Session(hosts, 10.0, 10.0, auth=settings["auth"], tls=tls)
    digest.start()
    try:
        lock = "%s/locks/%s" % (root, args.lock)
        for path in (root, lock, "%s/runs/%s/%s" % (root, args.lock, slot)):
            acls = sorted((a.id.scheme, a.id.id, a.perms) for a in digest.client.get_acls(path)[0])
            if acls != [("sasl", user, 31), ("world", "anyone", 1)]:
                problems.append("%s: ACL %s, expected sasl:%s ALL and world:anyone READ" % (path, acls, user))
            else:
                checked.append("ACL sasl:%s ALL, world:anyone READ on %s" % (user, path))
        try:
            digest.client.create(lock + "/intruder", b"x")
            problems.append("the cluster's digest identity could create under %s" % lock)
        except NoAuthError:
            checked.append("refused (NoAuth): the digest identity creating under %s" % lock)
    finally:
        digest.close()
    return problems, checked


def main():
    # Also run as `python3 -c SOURCE scan ...` (no copy to the host needed), where there is no __doc__.
    parser = argparse.ArgumentParser(description="security checks of the Molecule cluster")
    sub = parser.add_subparsers(dest="mode")
    scan_parser = sub.add_parser("scan")
    scan_parser.add_argument("--probe", help="lock name of a job to run while taking the process list")
    scan_parser.add_argument("--modes", action="append", default=[], metavar="PATH:MODE:OWNER:GROUP")
    scan_parser.add_argument("--only", action="store_true", help="scan only the files given")
    scan_parser.add_argument("files", nargs="*")
    intruder_parser = sub.add_parser("intruder")
    intruder_parser.add_argument("--lock", default="zl-security-probe")
    intruder_parser.add_argument("--plain-port", type=int, default=2181)
    sasl_parser = sub.add_parser("sasl")
    sasl_parser.add_argument("--lock", default="zl-sasl-probe")
    sasl_parser.add_argument("--root", default="/zoo-locked-sasl")
    args = parser.parse_args()
    if args.mode == "sasl":
        problems, checked = sasl(args)
    elif args.mode == "scan":
        problems, checked = scan(args)
    elif args.mode == "intruder":
        problems, checked = intruder(args)
    else:
        parser.error("choose scan, intruder or sasl")
    print(json.dumps({"problems": problems, "checked": checked}, indent=1, sort_keys=True))


if __name__ == "__main__":
    main()
