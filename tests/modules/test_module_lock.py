# -*- coding: utf-8 -*-
"""zoolocked.cron.lock and lock_info through the real ansible-playbook, against a real ZooKeeper."""

import calendar
import getpass
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest

from zkharness import REPO_ROOT, parse_log, wait_for

ZOO_LOCKED = os.path.join(REPO_ROOT, ".venv", "bin", "zoo-locked")
SESSION_TIMEOUT = 2  # as ZOO_LOCKED_SESSION_TIMEOUT in the modules conftest

LOCK = "zoolocked.cron.lock"
INFO = "zoolocked.cron.lock_info"


def zoo_locked_run(name, marker, *options):
    """A task that runs the runner on NAME (it must not start COMMAND while a playbook holds NAME)."""
    return {
        "ansible.builtin.command": {"argv": [ZOO_LOCKED, "run", name] + list(options) + ["--", "touch", marker]},
        "register": reg(marker),
        "failed_when": False,
    }


def reg(marker):
    """The variable a zoo_locked_run task registers."""
    return "run_" + re.sub(r"\W", "_", os.path.basename(marker))


def contenders(kazoo, zk, name):
    from kazoo.exceptions import NoNodeError

    try:
        return kazoo.get_children(zk.lock_path(name))
    except NoNodeError:
        return []


def holder_data(kazoo, zk, name):
    nodes = sorted(contenders(kazoo, zk, name), key=lambda n: int(n.rsplit("__lock__", 1)[1]))
    if not nodes:
        return None
    return json.loads(kazoo.get("%s/%s" % (zk.lock_path(name), nodes[0]))[0].decode())


def test_acquire_holds_after_the_task_until_released(ansible, kazoo, zk):
    held_marker = ansible.path("ran-while-held")
    free_marker = ansible.path("ran-when-free")
    tasks = [
        {"name": "check mode predicts the acquire", LOCK: {"name": "invoice"}, "check_mode": True,
         "register": "predicted"},
        {"name": "check mode touched nothing", INFO: {"names": ["invoice"]}, "register": "info_before"},
        {"name": "acquire", LOCK: {"name": "invoice", "purpose": "schema migration 7", "lease": 600},
         "register": "acquired"},
        {"name": "the lock is held in a later task", INFO: {"names": ["invoice"]}, "register": "info_held"},
        {"name": "all locks under the root", INFO: {}, "register": "info_all"},
        dict(zoo_locked_run("invoice", held_marker), name="the cron job does not start"),
        {"name": "acquire again", LOCK: {"name": "invoice"}, "register": "again"},
        {"name": "check mode predicts the release", LOCK: {"name": "invoice", "state": "released"},
         "check_mode": True, "register": "release_predicted"},
        {"name": "still held", INFO: {"names": ["invoice"]}, "register": "info_still"},
        {"name": "release", LOCK: {"name": "invoice", "state": "released"}, "register": "released"},
        {"name": "release again", LOCK: {"name": "invoice", "state": "released"}, "register": "released_again"},
        {"name": "free", INFO: {"names": ["invoice"]}, "register": "info_free"},
        dict(zoo_locked_run("invoice", free_marker, "--wait", "5"), name="the cron job runs again"),
    ]
    keep = ["predicted", "info_before", "acquired", "info_held", "info_all", reg(held_marker),
            "again", "release_predicted", "info_still", "released", "released_again", "info_free",
            reg(free_marker)]
    result = ansible.run(tasks, keep).succeeded()

    predicted = result["predicted"]
    assert predicted["changed"] and predicted["holder"] is None, predicted
    assert not result["info_before"]["locks"][0]["held"]

    acquired = result["acquired"]
    assert acquired["changed"] is True
    # The default owner names this ansible-playbook run (the action plugin's parent is the main process).
    assert acquired["owner"] == "ansible-playbook:%s@%s:%d" % (
        getpass.getuser(), socket.gethostname(), result.pid), acquired
    holder = acquired["holder"]
    assert holder["kind"] == "hold" and holder["owner"] == acquired["owner"]
    assert holder["purpose"] == "schema migration 7"
    assert isinstance(acquired["token"], int) and acquired["token"] == holder["token"]
    assert acquired["expires_at"] == holder["expires_at"]
    assert re.match(r"\A\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ\Z", acquired["expires_at"])

    lock = result["info_held"]["locks"][0]
    assert lock["held"] and lock["name"] == "invoice" and lock["waiters"] == []
    assert (lock["owner"], lock["token"], lock["purpose"]) == (acquired["owner"], acquired["token"], "schema migration 7")
    assert lock["since"] == holder["since"]
    assert [entry["name"] for entry in result["info_all"]["locks"]] == ["invoice"]

    ran_held = result[reg(held_marker)]
    assert ran_held["rc"] == 75, ran_held
    assert "skipped" in ran_held["stderr"] and acquired["owner"] in ran_held["stderr"]
    assert not os.path.exists(held_marker)

    assert result["again"]["changed"] is False and result["again"]["token"] == acquired["token"]
    assert result["release_predicted"]["changed"] is True
    assert result["info_still"]["locks"][0]["token"] == acquired["token"]

    released = result["released"]
    assert released["changed"] is True and released["token"] == acquired["token"]
    assert result["released_again"]["changed"] is False
    assert not result["info_free"]["locks"][0]["held"]
    ran_free = result[reg(free_marker)]
    assert ran_free["rc"] == 0 and os.path.exists(free_marker), ran_free

    # The detached holder saw its node deleted and went away.
    ansible.wait_gone(holder["pid"], 5)
    assert "released" in ansible.holder_events()
    assert contenders(kazoo, zk, "invoice") == []


def test_acquire_waits_for_a_running_job_then_fails_naming_it(ansible, runner):
    ready, until = ansible.path("job-ready"), ansible.path("job-may-end")
    job = runner.start("invoice", runner.worker(ready=ready, until=until), "--owner", "cron-invoice",
                       "--purpose", "nightly invoice run")
    wait_for(lambda: os.path.exists(ready), 20, message="the cron job to start")
    tasks = [
        {"name": "the running job holds the lock off", LOCK: {"name": "invoice", "wait": 1}, "register": "busy",
         "ignore_errors": True},
        {"name": "check mode warns who holds it", LOCK: {"name": "invoice"}, "check_mode": True,
         "register": "busy_predicted"},
        {"name": "let the job end", "ansible.builtin.file": {"path": until, "state": "touch", "mode": "0644"}},
        {"name": "acquire once the job is done", LOCK: {"name": "invoice", "wait": 30}, "register": "got"},
        {"name": "release", LOCK: {"name": "invoice", "state": "released"}, "register": "released"},
    ]
    result = ansible.run(tasks, ["busy", "busy_predicted", "got", "released"]).succeeded()
    busy = result["busy"]
    assert busy["failed"], busy
    message = busy["msg"]
    for expected in ("invoice", "after waiting 1s", "cron-invoice", "nightly invoice run", socket.gethostname(),
                     "since 20"):
        assert expected in message, message
    assert busy["holder"]["kind"] == "run" and busy["holder"]["owner"] == "cron-invoice"
    assert busy_token(job) == busy["holder"]["token"]
    predicted = result["busy_predicted"]
    assert predicted["changed"] and predicted["holder"]["owner"] == "cron-invoice"
    assert any("cron-invoice" in w for w in predicted.get("warnings", [])), predicted
    assert job.wait(10).returncode == 0
    got = result["got"]
    assert got["changed"] and got["token"] > busy["holder"]["token"]
    assert result["released"]["changed"]


def busy_token(job):
    """The token a background runner logged when it took its lock."""
    found = wait_for(lambda: [f for e, f in parse_log(job.stderr) if e == "acquired"], 10,
                     message="the runner's acquired line")
    return int(found[0]["token"])


def epoch(iso):
    return calendar.timegm(time.strptime(iso, "%Y-%m-%dT%H:%M:%SZ"))


def test_lease_ends_the_hold(ansible, kazoo, zk):
    tasks = [
        {"name": "acquire for three seconds", LOCK: {"name": "report", "lease": 3, "owner": "ops-lease-test"},
         "register": "acquired"},
        {"name": "the cron job waits for the lease to end, then runs", "ansible.builtin.command": {
            "argv": [ZOO_LOCKED, "run", "report", "--slot", "s1", "--wait", "20", "--", "date", "+%s.%N"]},
         "register": "job"},
        {"name": "nothing left to release", LOCK: {"name": "report", "state": "released", "owner": "ops-lease-test"},
         "register": "released"},
        {"name": "the run is on record", INFO: {"names": ["report"], "runs": 3}, "register": "info"},
    ]
    result = ansible.run(tasks, ["acquired", "job", "released", "info"]).succeeded()
    acquired, job = result["acquired"], result["job"]
    assert acquired["changed"] and acquired["owner"] == "ops-lease-test"
    # expires_at is truncated to the second: the lease ends within the second after it.
    ends = epoch(acquired["expires_at"])
    started = float(job["stdout"])
    assert ends <= started < ends + 1 + SESSION_TIMEOUT, (acquired["expires_at"], started, job["stderr"])
    assert result["released"]["changed"] is False
    runs = result["info"]["locks"][0]["runs"]
    assert [(r["slot"], r["state"]) for r in runs] == [("s1", "succeeded")], runs
    assert runs[0]["attempts"][-1]["exit"] == 0 and runs[0]["attempts"][-1]["token"] > acquired["token"]
    ansible.wait_gone(acquired["holder"]["pid"], 5)
    assert "the lease ended" in ansible.holder_events()
    assert contenders(kazoo, zk, "report") == []


@pytest.mark.parametrize("owner", [None, "ops-explicit"], ids=["default-owner", "explicit-owner"])
def test_sigkill_of_ansible_playbook_frees_the_lock(ansible, kazoo, zk, owner):
    """Default owner, holder on the controller: freed when the run dies. Explicit owner: at the lease end."""
    state, never = ansible.path("acquired") + ".json", ansible.path("never")
    lease = 6
    args = {"name": "deploy", "lease": lease}
    if owner:
        args["owner"] = owner
    tasks = [
        {"name": "acquire", LOCK: args, "register": "acquired"},
        {"name": "tell the test",
         "ansible.builtin.copy": {"content": "{{ acquired | to_json }}", "dest": state, "mode": "0644"}},
        {"name": "work for long", "ansible.builtin.wait_for": {"path": never, "timeout": 120}},
    ]
    run = ansible.start(tasks)
    wait_for(lambda: os.path.exists(state) and os.path.getsize(state), 60, message="the lock to be taken")
    with open(state) as handle:
        acquired = json.load(handle)
    assert holder_data(kazoo, zk, "deploy")["owner"] == acquired["owner"]
    os.kill(run.pid, signal.SIGKILL)
    if owner is None:
        wait_for(lambda: not contenders(kazoo, zk, "deploy"), 5, message="the lock to be freed")
    else:
        # This lock outlives its run: free at the lease end (within the second after expires_at), not before.
        wait_for(lambda: not contenders(kazoo, zk, "deploy"), lease + 5, message="the lease to end")
        assert time.time() >= epoch(acquired["expires_at"]), acquired["expires_at"]
    ansible.wait_gone(acquired["holder"]["pid"], 5)
    events = ansible.holder_events()
    assert ("ansible-playbook run (pid %d) ended" % run.pid if owner is None else "the lease ended") in events


def test_ad_hoc_commands_hold_until_released(ansible, kazoo, zk):
    """An ad-hoc command's lock outlives it; another ad-hoc command of the same user releases it."""
    rc, acquired, output = ansible.adhoc(LOCK, {"name": "invoice", "lease": 60, "purpose": "hotfix"})
    assert rc == 0 and acquired["changed"], output
    assert acquired["owner"] == "ansible:%s@%s" % (getpass.getuser(), socket.gethostname())
    assert holder_data(kazoo, zk, "invoice")["owner"] == acquired["owner"]  # still held after `ansible` ended
    rc, released, output = ansible.adhoc(LOCK, {"name": "invoice", "state": "released"})
    assert rc == 0 and released["changed"] and released["token"] == acquired["token"], output
    assert not contenders(kazoo, zk, "invoice")
    ansible.wait_gone(acquired["holder"]["pid"], 5)


def race_tasks(ansible, wait, go):
    state = ansible.path("state") + ".json"
    return state, [
        {"name": "acquire", LOCK: {"name": "deploy", "wait": wait}, "register": "acquired", "ignore_errors": True},
        {"name": "tell the test",
         "ansible.builtin.copy": {"content": "{{ acquired | to_json }}", "dest": state, "mode": "0644"}},
        {"name": "hold it until the test says go", "ansible.builtin.wait_for": {"path": go, "timeout": 60},
         "when": "acquired is succeeded"},
        {"name": "release", LOCK: {"name": "deploy", "state": "released"}, "when": "acquired is succeeded"},
    ]


def read_json(path):
    if not os.path.exists(path) or not os.path.getsize(path):
        return None
    with open(path) as handle:
        return json.load(handle)


def test_two_playbooks_racing_without_waiting_one_fails_cleanly(ansible, kazoo, zk):
    go = ansible.path("go")
    (state_a, tasks_a), (state_b, tasks_b) = race_tasks(ansible, 0, go), race_tasks(ansible, 0, go)
    runs = [ansible.start(tasks_a), ansible.start(tasks_b)]
    wait_for(lambda: read_json(state_a) and read_json(state_b), 60, message="both playbooks to try")
    results = [read_json(state_a), read_json(state_b)]
    winners = [r for r in results if not r.get("failed")]
    losers = [r for r in results if r.get("failed")]
    assert len(winners) == 1 and len(losers) == 1, results
    assert "held by %s" % winners[0]["owner"] in losers[0]["msg"]
    assert losers[0]["holder"]["token"] == winners[0]["token"]
    assert [holder_data(kazoo, zk, "deploy")["owner"]] == [winners[0]["owner"]]
    assert len(contenders(kazoo, zk, "deploy")) == 1  # the loser left nothing behind
    open(go, "w").close()
    for run in runs:
        run.wait(60).succeeded()
    wait_for(lambda: not contenders(kazoo, zk, "deploy"), 5, message="the lock to be freed")


def test_two_playbooks_racing_with_waiting_take_turns(ansible, kazoo, zk):
    go = ansible.path("go")
    (state_a, tasks_a), (state_b, tasks_b) = race_tasks(ansible, 60, go), race_tasks(ansible, 60, go)
    runs = [ansible.start(tasks_a), ansible.start(tasks_b)]
    first = wait_for(lambda: read_json(state_a) or read_json(state_b), 60, message="one playbook to hold the lock")
    assert first["changed"] and not first.get("failed"), first
    # The other one queues behind it and does not hold the lock.
    wait_for(lambda: len(contenders(kazoo, zk, "deploy")) == 2, 30, message="the second playbook to queue")
    assert holder_data(kazoo, zk, "deploy")["owner"] == first["owner"]
    assert [read_json(state_a), read_json(state_b)].count(None) == 1
    open(go, "w").close()
    for run in runs:
        run.wait(60).succeeded()
    second = [r for r in (read_json(state_a), read_json(state_b)) if r["owner"] != first["owner"]][0]
    assert second["changed"] and second["token"] > first["token"]
    wait_for(lambda: not contenders(kazoo, zk, "deploy"), 5, message="the lock to be freed")


def test_hosts_of_one_run_share_its_lock(ansible, kazoo, zk):
    out = ansible.tmp
    tasks = [
        {"name": "acquire on every host at once", LOCK: {"name": "deploy"}, "register": "acquired"},
        {"name": "save", "ansible.builtin.copy": {"content": "{{ acquired | to_json }}",
                                                  "dest": out + "/acquired-{{ inventory_hostname }}.json",
                                                  "mode": "0644"}, "delegate_to": "localhost"},
        {"name": "release on every host", LOCK: {"name": "deploy", "state": "released"}, "register": "released"},
        {"name": "save", "ansible.builtin.copy": {"content": "{{ released | to_json }}",
                                                  "dest": out + "/released-{{ inventory_hostname }}.json",
                                                  "mode": "0644"}, "delegate_to": "localhost"},
    ]
    ansible.run(tasks, inventory=ansible.inventory(["node1", "node2", "node3"]), hosts="all").succeeded()
    acquired = [read_json("%s/acquired-node%d.json" % (out, i)) for i in (1, 2, 3)]
    released = [read_json("%s/released-node%d.json" % (out, i)) for i in (1, 2, 3)]
    assert sorted(a["changed"] for a in acquired) == [False, False, True], acquired
    assert len(set(a["token"] for a in acquired)) == 1
    assert sorted(r["changed"] for r in released) == [False, False, True], released
    assert not contenders(kazoo, zk, "deploy")


def test_maintenance_playbook_pauses_jobs_and_always_releases(ansible, kazoo, zk):
    playbook = os.path.join(REPO_ROOT, "playbooks", "maintenance.yml")
    marker, codes = ansible.path("job-ran"), ansible.path("job-exit-codes")
    work = "sh -c '%s run invoice -- touch %s; echo $? >> %s; %s run report -- touch %s; echo $? >> %s'" % (
        ZOO_LOCKED, marker, codes, ZOO_LOCKED, marker, codes)
    extra = {"maintenance_jobs": ["invoice", "report"], "maintenance_command": work, "maintenance_wait": 5}
    run = ansible.start([], playbook=playbook, args=["-e", json.dumps(extra)])
    run.wait(90).succeeded()
    with open(codes) as handle:
        assert handle.read().split() == ["75", "75"]  # both jobs skipped: paused
    assert not os.path.exists(marker)
    assert not contenders(kazoo, zk, "invoice") and not contenders(kazoo, zk, "report")

    # The work fails: the play fails, and the locks are released all the same.
    extra["maintenance_command"] = "false"
    failed = ansible.start([], playbook=playbook, args=["-e", json.dumps(extra)]).wait(90)
    assert failed.returncode == 2, failed
    assert "Release the jobs' locks" in failed.output
    assert not contenders(kazoo, zk, "invoice") and not contenders(kazoo, zk, "report")
    # A holder hears of its release at its next heartbeat, after the release task may have returned.
    wait_for(lambda: ansible.holder_events().count("released: its lock node was deleted") == 4, 5,
             message="four holders to log their release:\n%s" % ansible.holder_events())


def test_bad_options_fail_clearly(ansible, zk):
    from zkharness import free_port

    nobody = "127.0.0.1:%d" % free_port()
    cases = [
        ("bad_name", LOCK, {"name": "../etc"}, None, "option name: bad lock name '../etc'"),
        ("bad_state", LOCK, {"name": "x", "state": "held"}, None, "value of state must be one of: acquired, released"),
        ("zero_lease", LOCK, {"name": "x", "lease": 0}, None, "option lease: must be more than 0 seconds"),
        ("bad_hosts", LOCK, {"name": "x", "hosts": "zk1:99999"}, None, "option hosts: 'zk1:99999' is not HOST[:PORT]"),
        ("force_acquire", LOCK, {"name": "x", "force": True}, None, "option force: applies only to state=released"),
        ("tls_to_plain_server", LOCK, {"name": "x", "tls": True, "connect_timeout": 1}, None,
         "no ZooKeeper server of %s answered within 1s" % zk.hosts),
        ("bad_env", LOCK, {"name": "x"}, {"ZOO_LOCKED_SESSION_TIMEOUT": "long"},
         "environment variable ZOO_LOCKED_SESSION_TIMEOUT: expected a number of seconds"),
        ("missing_config", LOCK, {"name": "x", "config": "/nonexistent/zoo-locked.conf"}, None,
         "config file /nonexistent/zoo-locked.conf: cannot read it"),
        ("no_server", LOCK, {"name": "x", "hosts": nobody, "connect_timeout": 1}, None,
         "no ZooKeeper server of %s answered within 1s" % nobody),
        ("bad_auth", INFO, {"auth": [{"scheme": "bogus", "credential": "x:y"}]}, None, "refused"),
        ("info_bad_name", INFO, {"names": ["ok", "a/b"]}, None, "option names: bad lock name 'a/b'"),
    ]
    tasks = []
    for register, module, args, env, _expected in cases:
        task = {"name": register, module: args, "register": register, "ignore_errors": True}
        if env:
            task["environment"] = env
        tasks.append(task)
    # The import guard: a Python without kazoo gets Ansible's missing-library message.
    bare = os.path.join(ansible.tmp, "no-kazoo")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", bare], check=True, timeout=60)
    tasks.append({"name": "no kazoo", INFO: {}, "register": "no_kazoo", "ignore_errors": True,
                  "vars": {"ansible_python_interpreter": os.path.join(bare, "bin", "python")}})
    # A credential is never shown, not even with -vvv.
    tasks.append({"name": "auth", INFO: {"auth": [{"credential": "operator:s3cr3t-w0rd"}]}, "register": "auth"})
    result = ansible.run(tasks, [c[0] for c in cases] + ["no_kazoo", "auth"], args=["-vvv"])
    for register, _module, _args, _env, expected in cases:
        outcome = result[register]
        assert outcome["failed"], (register, outcome)
        assert expected in outcome["msg"], (register, outcome["msg"])
    no_kazoo = result["no_kazoo"]
    assert no_kazoo["failed"] and "Failed to import the required Python library (kazoo)" in no_kazoo["msg"], no_kazoo
    assert result["auth"]["locks"] == [] and not result["auth"].get("failed")
    assert "s3cr3t-w0rd" not in result.output
    assert result.returncode == 0, result.output


def test_sasl_credentials_make_a_lock_only_the_cluster_may_touch(ansible, kazoo, zk):
    from kazoo.exceptions import NoAuthError
    from zkharness import SASL_USERS

    kazoo.ensure_path(zk.root.rsplit("/", 1)[0])  # the shared parent stays open to the other tests
    password = SASL_USERS["cluster"]
    auth = [{"scheme": "sasl", "credential": "cluster:" + password}]
    held_marker, free_marker = ansible.path("ran-while-held"), ansible.path("ran-when-free")
    cluster_env = {"ZOO_LOCKED_AUTH": "sasl:cluster:" + password}
    tasks = [
        {"name": "acquire", LOCK: {"name": "report", "auth": auth, "purpose": "audit"}, "register": "acquired"},
        dict(zoo_locked_run("report", held_marker), name="the cluster's cron job skips", environment=cluster_env),
        {"name": "release", LOCK: {"name": "report", "state": "released", "auth": auth}, "register": "released"},
        dict(zoo_locked_run("report", free_marker), name="and then runs", environment=cluster_env),
    ]
    result = ansible.run(tasks, ["acquired", reg(held_marker), "released", reg(free_marker)], args=["-v"]).succeeded()
    assert result["acquired"]["changed"] and result["released"]["changed"], result
    assert result[reg(held_marker)]["rc"] == 75 and not os.path.exists(held_marker)
    assert result[reg(free_marker)]["rc"] == 0 and os.path.exists(free_marker)
    for path in (zk.root, zk.root + "/locks", zk.lock_path("report")):
        acls, dummy_stat = kazoo.get_acls(path)
        found = sorted((a.id.scheme, a.id.id, a.perms) for a in acls)
        assert found == [("sasl", "cluster", 31), ("world", "anyone", 1)], (path, acls)
    with pytest.raises(NoAuthError):
        kazoo.create(zk.lock_path("report") + "/x__lock__", ephemeral=True, sequence=True)
    assert password not in result.output


# --- hand-overs: same-owner waiters, forced releases, releases of others' locks ----------------------------


def test_same_owner_waiters_behind_a_job_answer_at_once_when_it_ends(ansible, runner, kazoo, zk):
    """Two hosts of one run queue (wait=60) behind a running job. When it ends, the first takes the lock and the
    second answers at once "held by the same owner" (changed=false, same token), not at the end of its wait."""
    ready, until = ansible.path("job-ready"), ansible.path("job-may-end")
    job = runner.start("deploy", runner.worker(ready=ready, until=until), "--owner", "cron-deploy")
    wait_for(lambda: os.path.exists(ready), 20, message="the cron job to start")
    out = ansible.tmp
    tasks = [
        {"name": "acquire on both hosts, behind the job", LOCK: {"name": "deploy", "wait": 60},
         "register": "acquired"},
        {"name": "save", "ansible.builtin.copy": {"content": "{{ acquired | to_json }}",
                                                  "dest": out + "/acquired-{{ inventory_hostname }}.json",
                                                  "mode": "0644"}, "delegate_to": "localhost"},
        {"name": "release on every host", LOCK: {"name": "deploy", "state": "released"}},
    ]
    run = ansible.start(tasks, inventory=ansible.inventory(["node1", "node2"]), hosts="all")
    wait_for(lambda: len(contenders(kazoo, zk, "deploy")) == 3, 60, message="both hosts to queue behind the job")
    open(until, "w").close()
    ended = time.monotonic()
    paths = ["%s/acquired-node%d.json" % (out, i) for i in (1, 2)]
    # Both hosts' answers are saved by the task after the acquire, once it is done on both: well within the
    # wait of 60 s (before the fix the second host sat out the whole wait watching its same-owner predecessor).
    acquired = wait_for(lambda: all(read_json(p) for p in paths) and [read_json(p) for p in paths], 30,
                        message="both hosts to answer after the job ended")
    answered = time.monotonic() - ended
    print("both hosts answered %.1fs after the job was let go" % answered)
    run.wait(60).succeeded()
    assert job.wait(10).returncode == 0
    assert sorted(a["changed"] for a in acquired) == [False, True], acquired
    assert acquired[0]["token"] == acquired[1]["token"] > busy_token(job), acquired
    assert ansible.holder_events().count("acquired ") == 1, ansible.holder_events()
    wait_for(lambda: not contenders(kazoo, zk, "deploy"), 5, message="the lock to be freed")


def test_force_release_revokes_a_playbook_hold(ansible, kazoo, zk):
    """The holder is told (its node's data carries "revoked"), withdraws its node and ends: how=revoked."""
    rc, acquired, output = ansible.adhoc(LOCK, {"name": "deploy", "owner": "ops-a", "lease": 600,
                                                "purpose": "long work"})
    assert rc == 0 and acquired["changed"], output
    data = holder_data(kazoo, zk, "deploy")
    assert data["kind"] == "hold" and data["grace"] == SESSION_TIMEOUT, data  # its session timeout
    force = {"name": "deploy", "state": "released", "force": True, "owner": "ops-b"}
    tasks = [
        {"name": "check mode: would revoke", LOCK: force, "check_mode": True, "register": "predicted"},
        {"name": "still held", INFO: {"names": ["deploy"]}, "register": "info_still"},
        {"name": "revoke", LOCK: force, "register": "forced"},
        {"name": "free", INFO: {"names": ["deploy"]}, "register": "info_free"},
    ]
    result = ansible.run(tasks, ["predicted", "info_still", "forced", "info_free"]).succeeded()
    predicted = result["predicted"]
    assert predicted["changed"] and predicted["revoked"] and predicted["how"] == "revoked", predicted
    assert predicted["waited"] == 0 and predicted["token"] == acquired["token"], predicted
    assert any("ops-a" in w for w in predicted["warnings"]), predicted
    assert result["info_still"]["locks"][0]["owner"] == "ops-a"
    forced = result["forced"]
    print("revoked a playbook hold: waited %.2fs" % forced["waited"])
    assert forced["changed"] and forced["revoked"] and forced["how"] == "revoked", forced
    assert forced["holder"]["owner"] == "ops-a" and forced["token"] == acquired["token"], forced
    assert 0 <= forced["waited"] < SESSION_TIMEOUT, forced  # a heartbeat (a tenth of it) and a delete
    assert any("revoked" in w and "ops-a" in w for w in forced["warnings"]), forced
    assert not result["info_free"]["locks"][0]["held"]
    ansible.wait_gone(acquired["holder"]["pid"], 5)
    ended = [line for line in ansible.holder_events().splitlines() if " ended " in line]
    assert len(ended) == 1 and "revoked by ops-b" in ended[0], ansible.holder_events()
    assert contenders(kazoo, zk, "deploy") == []


STUBBORN = r"""
import signal, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
while True:
    with open(sys.argv[1], "a") as handle:
        handle.write("%.6f\n" % time.time())
    time.sleep(0.02)
"""


def test_force_release_of_a_job_hands_over_only_after_its_command_stopped(ansible, runner, kazoo, zk):
    """A job whose COMMAND ignores SIGTERM is force-released: the next waiter's COMMAND starts only after the old
    COMMAND's last sign of life (the runner KILLs it, then deletes its own node; the module waits for that)."""
    ticks = ansible.path("ticks")
    job = runner.start("invoice", [sys.executable, "-c", STUBBORN, ticks], "--owner", "cron-invoice",
                       "--session-timeout", "4")
    wait_for(lambda: os.path.exists(ticks) and os.path.getsize(ticks), 20, message="the job to start")
    waiter = runner.start("invoice", [sys.executable, "-c", "import time; print('%.6f' % time.time())"],
                          "--wait", "30", "--session-timeout", "4")
    wait_for(lambda: len(contenders(kazoo, zk, "invoice")) == 2, 20, message="the next job to queue")
    result = ansible.run([{"name": "break the job's lock",
                           LOCK: {"name": "invoice", "state": "released", "force": True, "owner": "ops"},
                           "register": "forced"}], ["forced"]).succeeded()
    forced = result["forced"]
    new = waiter.wait(30)
    assert new.returncode == 0, new
    started = float(new.stdout.split()[0])
    old = job.wait(30)
    with open(ticks) as handle:
        last = max(float(t) for t in handle.read().split())
    overlap = last - started
    print("forced release of a stubborn job: how=%s waited %.2fs, old COMMAND's last tick %.3fs before the new "
          "one started (overlap %.3fs), old runner exit %s" % (forced.get("how"), forced.get("waited") or 0,
                                                               -overlap, overlap, old.returncode))
    assert overlap < 0, (overlap, forced, old.stderr)
    assert forced["changed"] and forced["revoked"] and forced["holder"]["owner"] == "cron-invoice", forced
    assert forced["how"] == "revoked", forced  # the runner stopped COMMAND and let go within its grace
    assert old.returncode == 70, old


def test_force_release_breaks_a_holder_that_never_reacts(ansible, kazoo, zk):
    """A foreign kazoo Lock neither reads "revoked" nor has a grace: deleted after the module's session timeout."""
    from kazoo.recipe.lock import Lock as KazooLock

    foreign = KazooLock(kazoo, zk.lock_path("invoice"), "a foreign tool")
    assert foreign.acquire(timeout=10)
    (node,) = contenders(kazoo, zk, "invoice")
    result = ansible.run([{"name": "break it", LOCK: {"name": "invoice", "state": "released", "force": True},
                           "register": "forced"}], ["forced"]).succeeded()
    forced = result["forced"]
    print("broke a foreign lock after %.2fs" % forced["waited"])
    assert forced["changed"] and forced["revoked"] and forced["how"] == "broken", forced
    assert forced["holder"]["node"] == node and forced["holder"]["identifier"] == "a foreign tool", forced
    assert SESSION_TIMEOUT <= forced["waited"] < SESSION_TIMEOUT + 3, forced
    assert any("broke" in w and "a foreign tool" in w for w in forced["warnings"]), forced
    assert contenders(kazoo, zk, "invoice") == []


def test_release_of_a_lock_held_by_another_owner_warns(ansible, kazoo, zk):
    """Nothing to release for this owner: changed=false, with a warning that names the holder and force=true."""
    tasks = [
        {"name": "another owner holds it", LOCK: {"name": "report", "owner": "ops-a", "lease": 600},
         "register": "acquired"},
        {"name": "release as this run", LOCK: {"name": "report", "state": "released"}, "register": "refused"},
        {"name": "still held", INFO: {"names": ["report"]}, "register": "info"},
        {"name": "its owner releases it", LOCK: {"name": "report", "state": "released", "owner": "ops-a"},
         "register": "released"},
    ]
    result = ansible.run(tasks, ["acquired", "refused", "info", "released"]).succeeded()
    refused = result["refused"]
    assert refused["changed"] is False and "not held by" in refused["msg"], refused
    warnings = refused.get("warnings") or []
    assert len(warnings) == 1 and "ops-a" in warnings[0] and "force=true" in warnings[0], refused
    assert refused["revoked"] is False and refused["how"] is None, refused
    assert result["info"]["locks"][0]["owner"] == "ops-a"
    assert result["released"]["changed"] and result["released"]["how"] == "released"
    assert not result["released"].get("warnings"), result["released"]
    assert contenders(kazoo, zk, "report") == []
