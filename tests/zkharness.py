# -*- coding: utf-8 -*-
"""Test harness: a real standalone ZooKeeper server, the runner launcher, and process helpers.

Kept free of pytest so it can be used from a plain script too (``python tests/zkharness.py`` starts a
server, checks it and stops it). The fixtures that use it live in ``tests/conftest.py``.
"""

import errno
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The runner under test: the checkout's launcher (make venv), or another one (e.g. as the runner role
# installs it) named by ZOO_LOCKED_TEST_BIN.
ZOO_LOCKED = os.environ.get("ZOO_LOCKED_TEST_BIN") or os.path.join(REPO_ROOT, ".venv", "bin", "zoo-locked")

# Debian's zookeeper.jar names its dependencies in its manifest (Class-Path), so the jar alone starts the
# server; slf4j-simple is added so the server log goes somewhere (stderr, which we capture to a file).
# SASL DIGEST-MD5 users of the shared test server (its JAAS Server section): identities sasl:cluster, sasl:other.
SASL_USERS = {"cluster": "sasl-Pa55word-cluster", "other": "sasl-Pa55word-other"}
DEFAULT_CLASSPATH = ["/usr/share/java/zookeeper.jar", "/usr/share/java/slf4j-simple.jar"]
MAIN_CLASS = "org.apache.zookeeper.server.ZooKeeperServerMain"

# Every process the tests start carries this variable (the runner passes the environment on to COMMAND),
# so that a failed test can find and kill whatever it left behind, however deep.
MARK_VAR = "ZOO_LOCKED_TEST_MARK"


class HarnessError(Exception):
    pass


def free_port():
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def four_letter(port, word, timeout=1.0):
    """Send a four-letter command to 127.0.0.1:port and return the answer ('' when nobody answers)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.settimeout(timeout)
            s.sendall(word.encode("ascii"))
            chunks = []
            while True:
                data = s.recv(4096)
                if not data:
                    break
                chunks.append(data)
            return b"".join(chunks).decode("utf-8", "replace")
    except OSError:
        return ""


def wait_for(predicate, timeout, interval=0.02, message="condition"):
    """Poll predicate() until it returns a true value; return that value or raise AssertionError."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError("timed out after %.1f s waiting for %s" % (timeout, message))
        time.sleep(interval)


class ZKServer:
    """One standalone ZooKeeper server on 127.0.0.1 with its own data directory.

    tick_time 500 ms gives a minimum session timeout of 1 s, so tests can use short session timeouts.
    stop() and start() again reuse the same port and data (a restart).
    """

    def __init__(self, workdir, tick_time=500, max_session_timeout=60000, port=None, classpath=None, sasl_users=None):
        self.workdir = workdir
        # {user: password}: SASL DIGEST-MD5 users of the server's JAAS "Server" section (identities sasl:USER).
        self.sasl_users = dict(sasl_users or {})
        self.jaas = os.path.join(workdir, "jaas.conf")
        self.tick_time = tick_time
        self.max_session_timeout = max_session_timeout
        self.port = port or free_port()
        env_cp = os.environ.get("ZK_CLASSPATH")
        self.classpath = classpath or (env_cp.split(":") if env_cp else DEFAULT_CLASSPATH)
        self.datadir = os.path.join(workdir, "data")
        self.config = os.path.join(workdir, "zoo.cfg")
        self.logfile = os.path.join(workdir, "zookeeper.log")
        self.proc = None
        self._log = None

    @property
    def hosts(self):
        return "127.0.0.1:%d" % self.port

    def _write_config(self):
        os.makedirs(self.datadir, exist_ok=True)
        with open(self.config, "w") as f:
            f.write(
                "\n".join(
                    [
                        "tickTime=%d" % self.tick_time,
                        "dataDir=%s" % self.datadir,
                        "clientPort=%d" % self.port,
                        "clientPortAddress=127.0.0.1",
                        "maxSessionTimeout=%d" % self.max_session_timeout,
                        "maxClientCnxns=0",
                        "4lw.commands.whitelist=*",
                        "admin.enableServer=false",
                        # Fewer fsyncs: this data is thrown away.
                        "forceSync=no",
                    ]
                    + (["authProvider.sasl=org.apache.zookeeper.server.auth.SASLAuthenticationProvider"]
                       if self.sasl_users else [])
                    + [""]
                )
            )
        if self.sasl_users:
            with open(self.jaas, "w") as f:
                f.write("Server {\n  org.apache.zookeeper.server.auth.DigestLoginModule required\n%s;\n};\n" % "\n".join(
                    '  user_%s="%s"' % (user, password) for user, password in sorted(self.sasl_users.items())))

    def command(self):
        java = shutil.which("java")
        if not java:
            raise HarnessError("java not found: install a JRE (Debian: apt-get install -y zookeeper)")
        missing = [jar for jar in self.classpath if not os.path.exists(jar)]
        if missing:
            raise HarnessError(
                "ZooKeeper jars missing: %s (Debian: apt-get install -y zookeeper libslf4j-java; or set "
                "ZK_CLASSPATH)" % ", ".join(missing)
            )
        return [
            java,
            "-Xmx256m",
            "-XX:+UseSerialGC",
            "-XX:TieredStopAtLevel=1",
            "-Dzookeeper.admin.enableServer=false",
            "-Dorg.slf4j.simpleLogger.showDateTime=true",
            "-Dorg.slf4j.simpleLogger.dateTimeFormat=HH:mm:ss.SSS",
        ] + (["-Djava.security.auth.login.config=%s" % self.jaas] if self.sasl_users else []) + [
            "-cp",
            ":".join(self.classpath),
            MAIN_CLASS,
            self.config,
        ]

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout=30.0):
        if self.running():
            return self
        self._write_config()
        cmd = self.command()
        self._log = open(self.logfile, "ab")
        self._log.write(("\n=== start %s: %s\n" % (time.strftime("%H:%M:%S"), " ".join(cmd))).encode())
        self._log.flush()
        env = dict(os.environ)
        env[MARK_VAR] = "zookeeper"
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT, cwd=self.workdir,
            start_new_session=True, env=env,
        )
        _LIVE_SERVERS.add(self)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise HarnessError(
                    "ZooKeeper exited with %s while starting; log:\n%s" % (self.proc.returncode, self.log_tail())
                )
            if four_letter(self.port, "ruok", timeout=0.5) == "imok" and "Mode:" in four_letter(self.port, "srvr"):
                return self
            time.sleep(0.05)
        self.stop()
        raise HarnessError("ZooKeeper did not answer ruok within %.0f s; log:\n%s" % (timeout, self.log_tail()))

    def stop(self, timeout=10.0):
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout)
        if self._log is not None:
            self._log.close()
            self._log = None
        _LIVE_SERVERS.discard(self)

    def kill(self):
        """Stop at once, as a crash would (no clean shutdown)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.stop()

    def log_size(self):
        try:
            return os.path.getsize(self.logfile)
        except OSError:
            return 0

    def log_text(self, offset=0):
        try:
            with open(self.logfile, "rb") as f:
                f.seek(offset)
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def log_tail(self, lines=200, offset=0):
        return "\n".join(self.log_text(offset).splitlines()[-lines:])

    def __repr__(self):
        return "<ZKServer %s %s>" % (self.hosts, "running" if self.running() else "stopped")


_LIVE_SERVERS = set()


def stop_all_servers():
    for server in list(_LIVE_SERVERS):
        try:
            server.stop(timeout=5)
        except Exception:  # noqa: BLE001 - best effort at exit
            pass


# --- processes ------------------------------------------------------------------------------------------


def proc_stat(pid):
    """(state, ppid, pgrp, session) of a process, or None when it does not exist."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            data = f.read()
    except (OSError, ValueError):
        return None
    fields = data[data.rindex(")") + 2:].split()
    return fields[0], int(fields[1]), int(fields[2]), int(fields[3])


def pid_alive(pid):
    """True when the process exists and is not a zombie."""
    st = proc_stat(pid)
    return st is not None and st[0] not in ("Z", "X")


def group_members(pgid):
    """Pids of the live (non-zombie) processes in process group pgid."""
    members = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            st = proc_stat(int(entry))
            if st is not None and st[2] == pgid and st[0] not in ("Z", "X"):
                members.append(int(entry))
    return members


def group_alive(pgid):
    return bool(group_members(pgid))


def marked(prefix):
    """{mark: [pid, ...]} of the processes (this one aside) whose MARK_VAR starts with prefix."""
    needle = ("%s=%s" % (MARK_VAR, prefix)).encode()
    found = {}
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            with open("/proc/%s/environ" % entry, "rb") as f:
                env = f.read().split(b"\0")
        except OSError:
            continue
        for item in env:
            if item.startswith(needle):
                found.setdefault(item.split(b"=", 1)[1].decode(errors="replace"), []).append(int(entry))
                break
    return found


def pids_with_mark(mark):
    """Pids of live processes whose environment carries MARK_VAR=mark... (a prefix match)."""
    return sorted(pid for pids in marked(mark).values() for pid in pids if pid_alive(pid))


def kill_marked(mark):
    for pid in pids_with_mark(mark):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


# --- the runner -----------------------------------------------------------------------------------------


class Result:
    """What a finished runner did."""

    def __init__(self, args, returncode, stdout, stderr, elapsed):
        self.args = args
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr
        self.elapsed = elapsed

    def log_lines(self, event=None):
        """Parsed `zoo-locked: EVENT k=v ...` lines from stderr: [(event, {k: v})]."""
        return [line for line in parse_log(self.stderr) if event is None or line[0] == event]

    def __repr__(self):
        return "<Result rc=%s %.2fs args=%r\n--- stdout ---\n%s\n--- stderr ---\n%s>" % (
            self.returncode, self.elapsed, self.args, self.stdout, self.stderr,
        )


def parse_log(text):
    lines = []
    for raw in text.splitlines():
        if not raw.startswith("zoo-locked: "):
            continue
        parts = raw[len("zoo-locked: "):].split()
        if not parts:
            continue
        fields = {}
        for part in parts[1:]:
            if "=" in part:
                k, v = part.split("=", 1)
                fields[k] = v
        lines.append((parts[0], fields))
    return lines


def runner_env(env=None, mark=None):
    """The environment for a runner: ours without ZOO_LOCKED_* settings, plus env, plus the cleanup mark."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("ZOO_LOCKED_")}
    if mark:
        base[MARK_VAR] = mark
    if env:
        for k, v in env.items():
            if v is None:
                base.pop(k, None)
            else:
                base[k] = v
    return base


def run_runner(args, env=None, timeout=60.0, input=None, mark=None, text=True):
    """Run `zoo-locked ARGS...` to the end (bounded by timeout) and return a Result."""
    cmd = [ZOO_LOCKED] + [str(a) for a in args]
    start = time.monotonic()
    proc = subprocess.Popen(
        cmd,
        stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=runner_env(env, mark),
        text=text,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(input=input, timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate(timeout=10)
        raise AssertionError(
            "zoo-locked %s did not finish within %.0f s\n--- stdout ---\n%s\n--- stderr ---\n%s"
            % (" ".join(map(str, args)), timeout, out, err)
        )
    return Result(cmd, proc.returncode, out, err, time.monotonic() - start)


class Background:
    """A runner started in the background (its own session, so only the signals we send reach it)."""

    def __init__(self, args, env=None, mark=None, stdin=None):
        self.args = [ZOO_LOCKED] + [str(a) for a in args]
        self._err = tempfile.TemporaryFile()
        self._out = tempfile.TemporaryFile()
        self.started = time.monotonic()
        self.started_wall = time.time()
        self.proc = subprocess.Popen(
            self.args,
            stdin=stdin if stdin is not None else subprocess.DEVNULL,
            stdout=self._out,
            stderr=self._err,
            env=runner_env(env, mark),
            start_new_session=True,
        )
        self.pid = self.proc.pid
        self.result = None

    def poll(self):
        return self.proc.poll()

    def signal(self, signum):
        self.proc.send_signal(signum)

    def _read(self, f):
        f.seek(0)
        return f.read().decode("utf-8", "replace")

    @property
    def stderr(self):
        return self._read(self._err)

    @property
    def stdout(self):
        return self._read(self._out)

    def wait(self, timeout):
        """Wait (bounded) for the end and return a Result; AssertionError if it is still running."""
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                "zoo-locked (pid %d) still running after %.1f s\n--- stderr so far ---\n%s"
                % (self.pid, timeout, self.stderr)
            )
        if self.result is None:
            self.ended = time.monotonic()
            self.result = Result(self.args, rc, self.stdout, self.stderr, self.ended - self.started)
        return self.result

    def kill(self):
        if self.proc.poll() is None:
            try:
                self.proc.kill()
            except OSError:
                pass
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                pass

    def __repr__(self):
        return "<Background pid=%d rc=%s args=%r\n--- stderr ---\n%s>" % (
            self.pid, self.proc.poll(), self.args, self.stderr,
        )


# --- the command the runner runs in tests ---------------------------------------------------------------

WORKER_SOURCE = r'''
"""A COMMAND for the runner's tests: records what happens to it as JSON lines."""
import argparse, json, os, signal, subprocess, sys, time

p = argparse.ArgumentParser()
p.add_argument("--record", help="append JSON lines (start, signal, end) here")
p.add_argument("--ready", help="create this file once started")
p.add_argument("--sleep", type=float, default=0.0)
p.add_argument("--until", help="keep running until this file exists (at most 120 s)")
p.add_argument("--exit", type=int, default=0)
p.add_argument("--ignore-term", action="store_true", help="record SIGTERM and carry on")
p.add_argument("--child", choices=["plain", "ignore-term"], help="start a long-sleeping child in our group")
p.add_argument("--tag", default="main")
a = p.parse_args()

SIGNALS = {signal.SIGTERM: "TERM", signal.SIGINT: "INT", signal.SIGHUP: "HUP"}


def record(event, **kw):
    if not a.record:
        return
    kw.update(event=event, tag=a.tag, t=time.time(), pid=os.getpid(), pgid=os.getpgid(0), ppid=os.getppid())
    kw["env"] = {k: v for k, v in os.environ.items() if k.startswith("ZOO_LOCKED_") and k != "ZOO_LOCKED_TEST_MARK"}
    fd = os.open(a.record, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (json.dumps(kw) + "\n").encode())
    finally:
        os.close(fd)


def on_signal(signum, frame):
    record("signal", sig=SIGNALS[signum])
    if signum == signal.SIGTERM and a.ignore_term:
        return
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


for s in SIGNALS:
    signal.signal(s, on_signal)

record("start")
if a.child:
    cmd = [sys.executable, "-I", "-S", os.path.abspath(__file__), "--tag", "child", "--sleep", "300"]
    if a.record:
        cmd += ["--record", a.record]
    if a.child == "ignore-term":
        cmd.append("--ignore-term")
    child = subprocess.Popen(cmd)
    deadline = time.time() + 30
    while a.record and time.time() < deadline:
        with open(a.record) as f:
            if any(json.loads(l).get("pid") == child.pid for l in f if l.strip()):
                break
        time.sleep(0.01)
if a.ready:
    with open(a.ready + ".tmp", "w") as f:
        f.write(str(os.getpid()))
    os.rename(a.ready + ".tmp", a.ready)
end = time.time() + a.sleep
while time.time() < end:
    time.sleep(min(0.05, max(0.0, end - time.time())))
if a.until:
    end = time.time() + 120
    while not os.path.exists(a.until) and time.time() < end:
        time.sleep(0.01)
record("end", code=a.exit)
sys.exit(a.exit)
'''


def read_records(path):
    try:
        with open(path) as f:
            return [json.loads(line) for line in f if line.strip()]
    except OSError as e:
        if e.errno == errno.ENOENT:
            return []
        raise


def records(path, event=None, tag=None):
    """The worker's records, filtered by event and tag."""
    return [r for r in read_records(path) if (event is None or r["event"] == event) and (tag is None or r["tag"] == tag)]


def hostnames():
    """Names this host may go by in ZOO_LOCKED_HOLDER."""
    return {socket.gethostname(), socket.getfqdn(), socket.gethostname().split(".")[0]}


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as d:
        t0 = time.monotonic()
        server = ZKServer(d).start()
        print("started %r in %.2f s" % (server, time.monotonic() - t0))
        print(four_letter(server.port, "srvr"))
        server.stop()
        print("stopped")
    sys.exit(0)
