# -*- coding: utf-8 -*-
"""Shared fixtures: one real ZooKeeper server per session, a unique root per test, the runner helpers.

- ``zk_server``: the shared standalone server (session). Never stop it in a test: use ``zk_factory``.
- ``zk``: ``hosts``, ``root`` (``/t/<test>-<uuid>``), ``port`` and ``server`` for one test.
- ``kazoo``: a connected KazooClient for looking at (or tampering with) ZooKeeper from the test.
- ``zk_factory()``: a separate server for tests that stop or restart ZooKeeper.
- ``proxy_factory(port)``: a freezable TCP proxy (tests/tcpproxy.py).
- ``runner``: ``runner.run(NAME, CMD, *options)``, ``runner.start(...)`` (background), ``runner.raw([...])``,
  ``runner.worker(...)`` (the recording COMMAND) and friends; everything started is killed at teardown.

When a test fails, the ZooKeeper log written during it is attached to the report.
"""

import os
import re
import signal
import sys
import time
import uuid

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import zkharness  # noqa: E402
from tcpproxy import TCPProxy  # noqa: E402
from zkharness import (  # noqa: E402
    Background, ZKServer, kill_marked, read_records, run_runner, stop_all_servers, wait_for,
)

TEST_TIMEOUT = 120  # seconds, per test, when pytest-timeout is not installed


# --- a per-test time limit without pytest-timeout --------------------------------------------------------


def pytest_addoption(parser, pluginmanager):
    if not pluginmanager.hasplugin("timeout"):
        # pytest.ini names pytest-timeout's settings; declare them so pytest does not warn, and honour
        # `timeout` ourselves with SIGALRM (the test fails, its teardown still runs).
        parser.addini("timeout", "per-test time limit in seconds (fallback for pytest-timeout)", default=None)
        parser.addini("timeout_method", "ignored without pytest-timeout", default=None)


def pytest_configure(config):
    config.addinivalue_line("markers", "timeout(seconds): per-test time limit")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    if item.config.pluginmanager.hasplugin("timeout"):
        yield
        return
    marker = item.get_closest_marker("timeout")
    limit = float(marker.args[0]) if marker else float(item.config.getini("timeout") or TEST_TIMEOUT)

    def expired(signum, frame):
        pytest.fail("test exceeded its time limit of %.0f s" % limit, pytrace=True)

    old = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, limit)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


# --- ZooKeeper logs in failure reports -------------------------------------------------------------------


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        for server, offset in getattr(item, "_zk_log_marks", []):
            report.sections.append(
                ("ZooKeeper log %s (%s)" % (server.hosts, report.when),
                 server.log_tail(150, offset) or "(nothing logged during this test)")
            )


def _mark_log(request, server):
    marks = getattr(request.node, "_zk_log_marks", None)
    if marks is None:
        marks = request.node._zk_log_marks = []
    marks.append((server, server.log_size()))


# --- servers ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def zk_server(tmp_path_factory):
    # With SASL users: a server that also admits SASL clients, as a secured site's servers do; clients without
    # SASL are unaffected.
    server = ZKServer(str(tmp_path_factory.mktemp("zookeeper")), sasl_users=zkharness.SASL_USERS)
    try:
        server.start()
    except zkharness.HarnessError as e:
        pytest.exit("cannot start ZooKeeper for the tests: %s" % e, returncode=3)
    yield server
    server.stop()


_SKIPPED = []


def pytest_runtest_logreport(report):
    if report.skipped:
        _SKIPPED.append(report.nodeid)


def pytest_sessionfinish(session, exitstatus):
    stop_all_servers()
    kill_marked(_SESSION_MARK)
    # The bad-input table of docs/reliability.md says what this run proved: written by `make test` (which
    # sets ZOO_LOCKED_WRITE_DOCS=1) after a clean run, never by a partial run.
    if session.exitstatus == 0 and not _SKIPPED and os.environ.get("ZOO_LOCKED_WRITE_DOCS") == "1":
        from badinput import TABLE

        TABLE.write()
    # A skipped test is a promise not kept: the run fails, and says which ones.
    if _SKIPPED and session.exitstatus == 0:
        sys.stderr.write("\nfailing the run: %d test(s) skipped: %s\n" % (len(_SKIPPED), ", ".join(_SKIPPED)))
        session.exitstatus = 1


class ZKTarget:
    def __init__(self, server, root):
        self.server = server
        self.root = root

    @property
    def hosts(self):
        return self.server.hosts

    @property
    def port(self):
        return self.server.port

    def lock_path(self, name):
        return "%s/locks/%s" % (self.root, name)


def _root_for(request):
    name = re.sub(r"[^A-Za-z0-9_-]+", "-", request.node.name).strip("-")[:60]
    return "/t/%s-%s" % (name, uuid.uuid4().hex[:8])


@pytest.fixture
def zk(request, zk_server):
    if not zk_server.running():
        pytest.fail("the shared ZooKeeper server is down (a test stopped it? use zk_factory)")
    _mark_log(request, zk_server)
    return ZKTarget(zk_server, _root_for(request))


@pytest.fixture
def zk_factory(request, tmp_path):
    servers = []

    def make(**kwargs):
        server = ZKServer(str(tmp_path / ("zk%d" % len(servers))), **kwargs)
        servers.append(server)
        server.start()
        _mark_log(request, server)
        return server

    yield make
    for server in servers:
        server.stop()


@pytest.fixture
def kazoo(zk_server):
    from kazoo.client import KazooClient

    client = KazooClient(hosts=zk_server.hosts, timeout=10)
    client.start(timeout=10)
    yield client
    try:
        client.stop()
    finally:
        client.close()


@pytest.fixture(scope="session")
def collections_path(tmp_path_factory):
    """ANSIBLE_COLLECTIONS_PATH in which zoolocked.cron is this checkout (for real ansible-playbook runs)."""
    base = tmp_path_factory.mktemp("collections")
    namespace = base / "ansible_collections" / "zoolocked"
    namespace.mkdir(parents=True)
    os.symlink(zkharness.REPO_ROOT, str(namespace / "cron"))
    return str(base)


@pytest.fixture
def proxy_factory():
    proxies = []

    def make(port):
        proxy = TCPProxy(port)
        proxies.append(proxy)
        return proxy

    yield make
    for proxy in proxies:
        proxy.close()


# --- the runner ------------------------------------------------------------------------------------------

_SESSION_MARK = "session-%s" % uuid.uuid4().hex


@pytest.fixture(scope="session")
def worker_script(tmp_path_factory):
    path = tmp_path_factory.mktemp("worker") / "worker.py"
    path.write_text(zkharness.WORKER_SOURCE)
    return str(path)


@pytest.fixture(scope="session", autouse=True)
def _runner_present():
    if not os.access(zkharness.ZOO_LOCKED, os.X_OK):
        pytest.exit("%s is missing: run `make venv`" % zkharness.ZOO_LOCKED, returncode=3)


class Runner:
    """Runs zoo-locked against the test's ZooKeeper and root, and cleans up after the test."""

    def __init__(self, zk, tmp_path, worker_script, mark):
        self.zk = zk
        self.tmp = tmp_path
        self.worker_script = worker_script
        self.mark = mark
        self.background = []
        self._n = 0

    # connection options for every subcommand
    def conn(self, hosts=None, root=None):
        """--hosts and --root for this test's ZooKeeper and root; pass False to leave one out."""
        args = []
        if hosts is not False:
            args += ["--hosts", hosts or self.zk.hosts]
        if root is not False:
            args += ["--root", root or self.zk.root]
        return args

    def raw(self, args, env=None, timeout=60.0, input=None):
        """zoo-locked ARGS exactly as given."""
        return run_runner(args, env=env, timeout=timeout, input=input, mark=self.mark)

    def run_args(self, name, command, options=(), hosts=None, root=None):
        return ["run", name] + self.conn(hosts, root) + [str(o) for o in options] + ["--"] + list(command)

    def run(self, name, command, *options, hosts=None, root=None, env=None, timeout=60.0, input=None):
        return self.raw(self.run_args(name, command, options, hosts, root), env=env, timeout=timeout, input=input)

    def start(self, name, command, *options, hosts=None, root=None, env=None):
        bg = Background(self.run_args(name, command, options, hosts, root), env=env, mark=self.mark)
        self.background.append(bg)
        return bg

    def status(self, *args, hosts=None, root=None, env=None, timeout=30.0):
        return self.raw(["status"] + list(args) + self.conn(hosts, root), env=env, timeout=timeout)

    # the recording COMMAND
    def path(self, stem):
        self._n += 1
        return str(self.tmp / ("%s-%d" % (stem, self._n)))

    def worker(self, record=None, ready=None, sleep=None, until=None, exit=None, ignore_term=False, child=None,
               tag=None):
        cmd = [sys.executable, "-I", "-S", self.worker_script]
        for flag, value in (("--record", record), ("--ready", ready), ("--sleep", sleep), ("--until", until),
                            ("--exit", exit), ("--child", child), ("--tag", tag)):
            if value is not None:
                cmd += [flag, str(value)]
        if ignore_term:
            cmd.append("--ignore-term")
        return cmd

    def children(self, kazoo, name, root=None):
        """The nodes (holder and waiters) under ROOT/locks/NAME, [] when there is none."""
        from kazoo.exceptions import NoNodeError

        try:
            return sorted(kazoo.get_children("%s/locks/%s" % (root or self.zk.root, name)))
        except NoNodeError:
            return []

    def lock_nodes(self, kazoo, root=None):
        """Every node under ROOT/locks/*/ (any lock): what a runner that never locked must not leave."""
        from kazoo.exceptions import NoNodeError

        base = "%s/locks" % (root or self.zk.root)
        try:
            names = kazoo.get_children(base)
        except NoNodeError:
            return []
        return sorted("%s/%s" % (n, c) for n in names for c in self.children(kazoo, n, root))

    def cleanup(self):
        for bg in self.background:
            bg.kill()
        kill_marked(self.mark)


@pytest.fixture(scope="session")
def bad_input_table():
    from badinput import TABLE

    return TABLE


@pytest.fixture
def runner(zk, tmp_path, worker_script):
    r = Runner(zk, tmp_path, worker_script, "%s-%s" % (_SESSION_MARK, uuid.uuid4().hex[:8]))
    yield r
    r.cleanup()


# Re-exported for the tests.
__all__ = ["read_records", "wait_for", "time"]
