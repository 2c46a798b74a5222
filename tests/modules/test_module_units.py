# -*- coding: utf-8 -*-
"""The module_utils behind the lock modules, without Ansible: settings, validation, the run watch, the holder."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from zkharness import REPO_ROOT, pid_alive, wait_for

sys.path.insert(0, os.path.join(REPO_ROOT, ".venv", "lib", "zoo-locked"))

from zoo_locked import _common, _config, _hold  # noqa: E402


def params(**values):
    base = dict((key, None) for key in _common.connection_argument_spec())
    base.update(values)
    return base


# --- connection settings -----------------------------------------------------------------------------------


def test_settings_follow_the_runners_precedence(tmp_path):
    config = tmp_path / "zoo-locked.conf"
    config.write_text("[zoo-locked]\nhosts = file:2181\nroot = /from-file\nsession_timeout = 7\n")
    env = {"ZOO_LOCKED_CONFIG": str(config), "ZOO_LOCKED_ROOT": "/from-env"}
    settings = _common.connection_settings(params(session_timeout=3), env)
    assert settings["hosts"] == "file:2181"  # the file, nothing above it
    assert settings["root"] == "/from-env"  # the environment beats the file
    assert settings["session_timeout"] == 3.0  # the option beats both
    assert settings["connect_timeout"] == _config.DEFAULTS["connect_timeout"]
    assert settings["auth"] == []
    assert settings["tls"] is False and settings["tls_validate_certs"] is True


def test_tls_settings_come_from_the_runners_file_unless_given(tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_text("not checked here\n")
    config = tmp_path / "zoo-locked.conf"
    config.write_text("[zoo-locked]\ntls = true\ntls_ca_cert = %s\n" % ca)
    env = {"ZOO_LOCKED_CONFIG": str(config)}
    from_file = _common.connection_settings(params(), env)
    assert from_file["tls"] is True and from_file["tls_ca_cert"] == str(ca)
    overridden = _common.connection_settings(params(tls=False, tls_client_key_password="pw"), env)
    assert overridden["tls"] is False and overridden["tls_client_key_password"] == "pw"


def test_explicit_config_and_auth(tmp_path):
    config = tmp_path / "zoo-locked.conf"
    config.write_text("[zoo-locked]\nroot = /from-file\n")
    explicit = _common.connection_settings(params(config=str(config), auth=[{"scheme": "digest", "credential": "u:p"}]),
                                           {})
    assert explicit["root"] == "/from-file" and explicit["auth"] == [("digest", "u:p")]


@pytest.mark.parametrize("values, message", [
    ({"hosts": "a:1,,b"}, "option hosts: hosts must be a comma-separated list"),
    ({"root": "/a/"}, "option root: root must be an absolute ZooKeeper path"),
    ({"session_timeout": 0.5}, "option session_timeout: must be between 1 and 600 seconds"),
    ({"connect_timeout": 1e9}, "option connect_timeout: must be between 0.1 and 600 seconds"),
    ({"tls_ca_cert": "/nonexistent/ca.pem"}, "option tls_ca_cert: /nonexistent/ca.pem is not a readable file"),
    ({"tls_client_cert": "relative.pem"}, "option tls_client_cert: must be an absolute file path"),
    ({"config": "/nonexistent"}, "config file /nonexistent: cannot read it"),
])
def test_bad_settings_name_the_option(values, message):
    with pytest.raises(_config.ConfigError) as caught:
        _common.connection_settings(params(**values), {})
    assert message in str(caught.value)


@pytest.mark.parametrize("values, message", [
    ({"name": ".hidden"}, "option name: bad lock name '.hidden'"),
    ({"name": "x" * 101}, "option name: bad lock name"),
    ({"lease": 0}, "option lease: must be more than 0 seconds"),
    ({"lease": 32 * 24 * 3600}, "option lease: must be at most 2678400 seconds (31 days)"),
    ({"wait": -0.1}, "option wait: must be at least 0 seconds"),
    ({"force": True}, "option force: applies only to state=released"),
])
def test_bad_lock_options_fail_before_connecting(values, message):
    task = params(name="ok", state="acquired", wait=0.0, lease=3600.0, owner="me", purpose=None, force=False,
                  hosts="127.0.0.1:1", connect_timeout=0.1)
    task.update(values)
    with pytest.raises(_hold.TaskError) as caught:
        _hold.lock_task(task, check_mode=False)
    assert message in str(caught.value)


# --- the run a default owner names -------------------------------------------------------------------------


def test_the_default_owner_of_an_ancestor_run_is_watched():
    parent = os.getppid()
    watch = _hold._run_to_watch("ansible-playbook:someone@controller:%d" % parent)
    assert watch is not None and watch[0] == parent
    assert _hold._run_alive(watch)
    assert not _hold._run_alive((parent, watch[1] + 1))  # same pid, another process: a reused pid


def test_other_owners_are_not_watched():
    stranger = subprocess.Popen(["sleep", "30"])
    try:
        assert _hold._run_to_watch("ansible-playbook:someone@controller:%d" % stranger.pid) is None
    finally:
        stranger.kill()
        stranger.wait()
    assert _hold._run_to_watch("ops-team") is None
    assert _hold._run_to_watch("ansible-playbook:someone@controller:%d" % os.getppid() + "x") is None
    assert _hold._run_to_watch("ansible-playbook:someone@controller:1") is None


# --- the holder on its own ---------------------------------------------------------------------------------

HOLDER_SCRIPT = r"""
import json, sys
sys.path.insert(0, %(lib)r)
from zoo_locked import _hold
job = json.loads(sys.argv[1])
print(json.dumps(_hold.spawn_holder(job, 30)))
"""


def spawn(tmp_path, zk, **job):
    base = {
        "settings": {"hosts": zk.hosts, "root": zk.root, "session_timeout": 2.0, "connect_timeout": 5.0, "auth": []},
        "name": "job", "owner": "unit", "purpose": "unit test", "wait": 0.0, "lease": 60.0, "watch": None,
        "log": str(tmp_path / "holder.log"),
    }
    base.update(job)
    script = HOLDER_SCRIPT % {"lib": os.path.join(REPO_ROOT, ".venv", "lib", "zoo-locked")}
    out = subprocess.run([sys.executable, "-c", script, json.dumps(base)], capture_output=True, text=True, timeout=60,
                         check=False)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_sigterm_to_the_holder_releases_the_lock(tmp_path, zk, kazoo):
    report = spawn(tmp_path, zk)
    assert report["ok"] and report["changed"], report
    pid = report["holder"]["pid"]
    try:
        assert kazoo.get_children(zk.lock_path("job")) == [report["holder"]["node"]]
        again = spawn(tmp_path, zk)  # the same owner: nothing to do
        assert again["ok"] and not again["changed"] and again["token"] == report["token"]
        other = spawn(tmp_path, zk, owner="someone-else")
        assert not other["ok"] and "held by unit" in other["error"] and other["holder"]["token"] == report["token"]
        os.kill(pid, signal.SIGTERM)
        wait_for(lambda: not pid_alive(pid), 5, message="the holder to end")
        assert kazoo.get_children(zk.lock_path("job")) == []
        assert "reason=\"signal 15\"" in (tmp_path / "holder.log").read_text()
    finally:
        if pid_alive(pid):
            os.kill(pid, signal.SIGKILL)


def test_a_holder_that_cannot_connect_reports_it(tmp_path, zk):
    from zkharness import free_port

    started = time.monotonic()
    settings = {"hosts": "127.0.0.1:%d" % free_port(), "root": zk.root, "session_timeout": 2.0,
                "connect_timeout": 0.5, "auth": []}
    report = spawn(tmp_path, zk, settings=settings)
    assert not report["ok"] and "answered within 0.5s" in report["error"]
    assert time.monotonic() - started < 10


def test_ansible_doc_renders_both_modules(tmp_path):
    from zkharness import REPO_ROOT as repo

    tree = tmp_path / "ansible_collections" / "zoolocked"
    tree.mkdir(parents=True)
    os.symlink(repo, str(tree / "cron"))
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(tmp_path), ANSIBLE_NOCOLOR="1")
    out = subprocess.run([os.path.join(repo, ".venv", "bin", "ansible-doc"), "--json", "zoolocked.cron.lock",
                          "zoolocked.cron.lock_info"], capture_output=True, text=True, env=env, timeout=60,
                         check=False)
    assert out.returncode == 0, out.stderr
    docs = json.loads(out.stdout)
    for name in ("zoolocked.cron.lock", "zoolocked.cron.lock_info"):
        doc = docs[name]
        assert doc["examples"].strip() and doc["return"], name
        attributes = doc["doc"]["attributes"]
        assert attributes["check_mode"]["support"] == "full" and attributes["idempotent"]["support"] == "full"
        assert {"hosts", "root", "session_timeout", "auth", "tls"} <= set(doc["doc"]["options"]), name
    assert docs["zoolocked.cron.lock"]["doc"]["options"]["auth"]["suboptions"]["credential"]["required"]
    assert set(docs["zoolocked.cron.lock"]["return"]) >= {"name", "owner", "token", "holder", "expires_at"}


def test_a_dead_holder_frees_the_lock_when_its_session_expires(tmp_path, zk, kazoo):
    """What happens when the holder's host dies: nobody withdraws, ZooKeeper expires the session."""
    report = spawn(tmp_path, zk)
    pid = report["holder"]["pid"]
    os.kill(pid, signal.SIGKILL)
    killed = time.monotonic()
    wait_for(lambda: kazoo.get_children(zk.lock_path("job")) == [], 2.0 + 5, message="the session to expire")
    assert time.monotonic() - killed > 1.0  # not withdrawn: ZooKeeper freed it (2 s session)


def test_with_credentials_a_lock_tree_anyone_may_change_is_refused(tmp_path, zk, kazoo):
    kazoo.ensure_path(zk.lock_path("job"))  # ZooKeeper's open ACL
    settings = {"hosts": zk.hosts, "root": zk.root, "session_timeout": 2.0, "connect_timeout": 5.0,
                "auth": [("digest", "ops:secret")]}
    report = spawn(tmp_path, zk, settings=settings)
    assert not report["ok"] and "ACLs are weaker than the credentials ask for" in report["error"], report
    assert "secret" not in report["error"]
    assert kazoo.get_children(zk.lock_path("job")) == []


# --- Lock.acquire: a waiter hears of every new holder ------------------------------------------------------


def test_a_waiter_hears_of_each_new_holder_while_its_predecessor_stays(zk, kazoo):
    """Queue: H (holder), P (waiter), us. When H goes, P holds the lock while our predecessor (P) stays: on_wait
    must hear of P at once (it watches the holder too), not when P goes."""
    import threading

    from zoo_locked import _lock, _zk

    path = zk.lock_path("job")
    first, second = [kazoo.create(path + "/%s__lock__" % tag, json.dumps({"owner": tag}).encode(), ephemeral=True,
                                  sequence=True, makepath=True) for tag in ("h", "p")]
    session = _zk.Session(zk.hosts, 2.0, 5.0)
    session.start()
    heard, outcome = [], {}

    def on_wait(holder):
        heard.append((time.monotonic(), holder.data.get("owner")))

    def take():
        try:
            outcome["token"] = _lock.Lock(session, zk.root, "job", {"owner": "us"}).acquire(20, on_wait=on_wait)
        except Exception as exc:  # noqa: BLE001 - reported by the assertions below
            outcome["error"] = exc

    thread = threading.Thread(target=take)
    thread.start()
    try:
        wait_for(lambda: heard, 10, message="on_wait to hear of the first holder")
        assert [owner for _t, owner in heard] == ["h"]
        kazoo.delete(first)
        gone = time.monotonic()
        wait_for(lambda: len(heard) == 2, 5, message="on_wait to hear of the new holder")
        assert heard[1][1] == "p" and heard[1][0] - gone < 1.0, heard
        assert thread.is_alive() and not outcome  # still waiting: P holds the lock
        kazoo.delete(second)
        thread.join(10)
        assert "token" in outcome, outcome
    finally:
        thread.join(20)
        session.close()
