# -*- coding: utf-8 -*-
"""Fixtures for the modules' tests: real ansible-playbook runs against the shared test ZooKeeper.

- ``ansible``: writes a playbook (Python data, written as JSON, which is YAML) to the test's temp dir and runs
  ``ansible-playbook`` on it, with ``zoolocked.cron`` resolving to this checkout, ``localhost`` on the local
  connection with the venv's Python, and ZOO_LOCKED_HOSTS / ZOO_LOCKED_ROOT / ZOO_LOCKED_SESSION_TIMEOUT set
  to the test's ZooKeeper, root and a short session. Every registered variable named in ``keep`` is written
  to a JSON file at the end of the play (in ``always``, so also after a failure) and returned.
- Everything started (playbooks, and the detached lock holders, which inherit the test mark) is killed at
  teardown, and the holders' event log (ZOO_LOCKED_HOLD_LOG) is shown when a test fails.
"""

import json
import os
import signal
import subprocess
import time
import uuid

import pytest

from zkharness import MARK_VAR, REPO_ROOT, kill_marked, pid_alive

VENV_BIN = os.path.join(REPO_ROOT, ".venv", "bin")
ANSIBLE_PLAYBOOK = os.path.join(VENV_BIN, "ansible-playbook")
PYTHON = os.path.join(VENV_BIN, "python")
ZOO_LOCKED = os.path.join(VENV_BIN, "zoo-locked")
SESSION_TIMEOUT = 2  # seconds: a released lock's holder notices within a tenth of it


class Playbook:
    """A finished ansible-playbook run."""

    def __init__(self, args, returncode, output, kept, elapsed, pid):
        self.args = args
        self.returncode = returncode
        self.output = output
        self.kept = kept
        self.elapsed = elapsed
        self.pid = pid

    def __getitem__(self, name):
        try:
            return self.kept[name]
        except KeyError:
            raise AssertionError("%s was not registered; the run:\n%s" % (name, self))

    def succeeded(self):
        """Raise (with the whole output) unless the run succeeded."""
        if self.returncode != 0:
            raise AssertionError("ansible-playbook failed (rc %s):\n%s" % (self.returncode, self.output))
        return self

    def __repr__(self):
        return "<Playbook rc=%s %.1fs pid=%s>\n%s" % (self.returncode, self.elapsed, self.pid, self.output)


class Running:
    """An ansible-playbook in the background (its own session and process group)."""

    def __init__(self, ansible, args, env, keep_file):
        self.ansible = ansible
        self.args = args
        self.keep_file = keep_file
        self.out = open(os.path.join(ansible.tmp, "out-%s.log" % uuid.uuid4().hex[:6]), "w+")
        self.started = time.monotonic()
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=self.out, stderr=subprocess.STDOUT,
                                     env=env, cwd=ansible.tmp, start_new_session=True)
        self.pid = self.proc.pid

    @property
    def output(self):
        self.out.flush()
        with open(self.out.name) as handle:
            return handle.read()

    def wait(self, timeout=90.0):
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError("ansible-playbook did not finish within %.0fs:\n%s" % (timeout, self.output))
        kept = {}
        if os.path.exists(self.keep_file):
            with open(self.keep_file) as handle:
                kept = json.load(handle)
        return Playbook(self.args, rc, self.output, kept, time.monotonic() - self.started, self.pid)

    def kill(self):
        """SIGKILL the whole run (main process and workers)."""
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except OSError:
            pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            pass


class Ansible:
    def __init__(self, zk, tmp, collections, mark):
        self.zk = zk
        self.tmp = str(tmp)
        self.collections = collections
        self.mark = mark
        self.hold_log = os.path.join(self.tmp, "holders.log")
        self.config = os.path.join(self.tmp, "zoo-locked.conf")
        with open(self.config, "w") as handle:
            handle.write("[zoo-locked]\n")
        self.running = []
        self._n = 0

    def env(self, extra=None):
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ZOO_LOCKED_", "ANSIBLE_"))}
        env.update({
            "ANSIBLE_COLLECTIONS_PATH": self.collections,
            "ANSIBLE_LOCAL_TEMP": os.path.join(self.tmp, "ansible-local"),
            "ANSIBLE_REMOTE_TEMP": os.path.join(self.tmp, "ansible-remote"),
            "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_RETRY_FILES_ENABLED": "0",
            "ANSIBLE_HOST_KEY_CHECKING": "0",
            "ANSIBLE_DEPRECATION_WARNINGS": "0",
            "ZOO_LOCKED_HOSTS": self.zk.hosts,
            "ZOO_LOCKED_ROOT": self.zk.root,
            "ZOO_LOCKED_SESSION_TIMEOUT": str(SESSION_TIMEOUT),
            "ZOO_LOCKED_CONNECT_TIMEOUT": "5",
            "ZOO_LOCKED_CONFIG": self.config,  # never the machine's /etc/zoo-locked/zoo-locked.conf
            "ZOO_LOCKED_HOLD_LOG": self.hold_log,
            "PATH": VENV_BIN + os.pathsep + os.environ.get("PATH", ""),
            MARK_VAR: self.mark,
        })
        env.update(extra or {})
        return env

    def path(self, stem):
        self._n += 1
        return os.path.join(self.tmp, "%s-%d" % (stem, self._n))

    def inventory(self, hosts=("localhost",)):
        path = self.path("inventory")
        with open(path, "w") as handle:
            for host in hosts:
                handle.write("%s ansible_connection=local ansible_python_interpreter=%s\n" % (host, PYTHON))
        return path

    def write(self, tasks, keep=(), hosts="localhost", play=None):
        """A one-play playbook of ``tasks``; the variables in ``keep`` are saved at the end, whatever happens."""
        keep_file = self.path("kept") + ".json"
        save = {
            "name": "Save the registered results for the test",
            "ansible.builtin.copy": {
                "content": "{{ {%s} | to_json }}"
                % ", ".join("'%s': lookup('vars', '%s', default=None)" % (name, name) for name in keep),
                "dest": keep_file,
                "mode": "0644",
            },
            "delegate_to": "localhost",
            "run_once": True,
        }
        body = dict(play or {})
        body.setdefault("name", "test play")
        body.setdefault("hosts", hosts)
        body.setdefault("gather_facts", False)
        body["tasks"] = [{"block": list(tasks), "always": [save]}]
        path = self.path("playbook") + ".yml"
        with open(path, "w") as handle:
            json.dump([body], handle, indent=1)
        return path, keep_file

    def start(self, tasks, keep=(), inventory=None, args=(), env=None, hosts="localhost", playbook=None):
        if playbook is None:
            playbook, keep_file = self.write(tasks, keep, hosts)
        else:
            keep_file = self.path("kept") + ".json"
        cmd = [ANSIBLE_PLAYBOOK, "-i", inventory or self.inventory(), playbook] + list(args)
        run = Running(self, cmd, self.env(env), keep_file)
        self.running.append(run)
        return run

    def run(self, tasks, keep=(), timeout=90.0, **kwargs):
        return self.start(tasks, keep, **kwargs).wait(timeout)

    def adhoc(self, module, args, timeout=60.0):
        """``ansible localhost -m MODULE -a ARGS``: (returncode, the JSON result of localhost, output)."""
        cmd = [os.path.join(VENV_BIN, "ansible"), "-i", self.inventory(), "localhost", "-m", module, "-a",
               json.dumps(args), "--one-line"]
        done = subprocess.run(cmd, env=self.env(), cwd=self.tmp, stdin=subprocess.DEVNULL, capture_output=True,
                              text=True, timeout=timeout, check=False)
        line = [x for x in done.stdout.splitlines() if x.startswith("localhost | ")]
        result = json.loads(line[0].split("=> ", 1)[1]) if line else None
        return done.returncode, result, done.stdout + done.stderr

    def holder_events(self):
        try:
            with open(self.hold_log) as handle:
                return handle.read()
        except IOError:
            return ""

    @staticmethod
    def wait_gone(pid, timeout):
        """Poll until the process has ended (or is a zombie); AssertionError otherwise."""
        deadline = time.monotonic() + timeout
        while pid_alive(pid):
            if time.monotonic() >= deadline:
                raise AssertionError("process %d still alive after %.1fs" % (pid, timeout))
            time.sleep(0.05)

    def cleanup(self):
        for run in self.running:
            run.kill()
            run.out.close()
        kill_marked(self.mark)


@pytest.fixture
def ansible(zk, tmp_path, collections_path):
    a = Ansible(zk, tmp_path, collections_path, "modules-%s" % uuid.uuid4().hex[:12])
    yield a
    a.cleanup()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    a = getattr(item, "funcargs", {}).get("ansible")
    if report.failed and isinstance(a, Ansible):
        report.sections.append(("lock holders' events (%s)" % report.when, a.holder_events() or "(none)"))
