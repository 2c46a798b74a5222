"""Only the cluster may touch its locks: digest auth, ACLs, and secrets kept out of sight (issue 7)."""

import json
import os
import subprocess

import pytest
from kazoo.client import KazooClient
from kazoo.exceptions import NoAuthError
from kazoo.security import OPEN_ACL_UNSAFE

from zkharness import records, wait_for

PASSWORD = "s3cret-Pa55word"
AUTH = "digest:cluster:" + PASSWORD


@pytest.fixture(autouse=True)
def _open_parent(zk, kazoo):
    """The parent of the test's root, made open beforehand: a run with credentials would otherwise create
    the parent shared by every test with the cluster's ACL, and lock the other tests out."""
    kazoo.ensure_path(zk.root.rsplit("/", 1)[0])


@pytest.fixture
def outsider(zk_server):
    """A client without credentials: anyone who can reach ZooKeeper."""
    client = KazooClient(hosts=zk_server.hosts)
    client.start(timeout=10)
    yield client
    client.stop()
    client.close()


def _auth_env(**extra):
    env = {"ZOO_LOCKED_AUTH": AUTH}
    env.update(extra)
    return env


def test_lock_tree_refuses_everyone_but_the_cluster(runner, outsider):
    record, ready = runner.path("runs"), runner.path("ready")
    holder = runner.start("invoices", runner.worker(record=record, ready=ready, sleep=60), "--slot", "s1",
                          env=_auth_env())
    wait_for(lambda: os.path.exists(ready), 15, message="COMMAND to start")
    root = runner.zk.root
    lock_dir = root + "/locks/invoices"
    (contender,) = outsider.get_children(lock_dir)
    attempts = {
        "create a contender": lambda: outsider.create(lock_dir + "/x__lock__", b"", ephemeral=True, sequence=True),
        "delete the holder's node": lambda: outsider.delete(lock_dir + "/" + contender),
        "change the holder's node": lambda: outsider.set(lock_dir + "/" + contender, b"{}"),
        "change the run record": lambda: outsider.set(root + "/runs/invoices/s1", b"{}"),
        "delete the run record": lambda: outsider.delete(root + "/runs/invoices/s1"),
        "create a lock": lambda: outsider.create(root + "/locks/other"),
        "change the root's ACL": lambda: outsider.set_acls(root, OPEN_ACL_UNSAFE),
    }
    for what, attempt in attempts.items():
        with pytest.raises(NoAuthError):
            attempt()
            pytest.fail("an outsider could %s" % what)
    # Reading is allowed: status works for anyone.
    data, dummy_stat = outsider.get(lock_dir + "/" + contender)
    assert json.loads(data.decode())["host"]
    holder.signal(15)
    assert holder.wait(15).returncode == 143


def test_runner_without_or_with_wrong_credentials_is_refused(runner):
    assert runner.run("guarded", ["true"], env=_auth_env()).returncode == 0
    marker = runner.path("ran")
    for env in ({}, {"ZOO_LOCKED_AUTH": "digest:cluster:wrong"}):
        result = runner.run("guarded", ["touch", marker], env=env)
        assert result.returncode == 78, result
        assert "NoAuth" in result.stderr and "ZOO_LOCKED_AUTH" in result.stderr
        assert PASSWORD not in result.stderr and "cluster:wrong" not in result.stderr
        assert not os.path.exists(marker)


def test_weaker_acls_are_reported_and_fixed_on_request(runner, kazoo):
    # A tree made without credentials: open to everyone.
    assert runner.run("legacy", ["true"]).returncode == 0
    marker = runner.path("ran")
    refused = runner.run("legacy", ["touch", marker], env=_auth_env())
    assert refused.returncode == 78 and "zoo-locked acl --fix" in refused.stderr, refused
    assert not os.path.exists(marker)
    check = runner.raw(["acl", "--json"] + runner.conn(), env=_auth_env())
    assert check.returncode == 1
    weak = {w["path"] for w in json.loads(check.stdout)["weak"]}
    assert runner.zk.root + "/locks/legacy" in weak
    fixed = runner.raw(["acl", "--fix"] + runner.conn(), env=_auth_env())
    assert fixed.returncode == 0, fixed
    assert runner.run("legacy", ["touch", marker], env=_auth_env()).returncode == 0
    assert os.path.exists(marker)
    with pytest.raises(NoAuthError):
        kazoo.create(runner.zk.root + "/locks/legacy/intruder")


def test_credentials_from_a_config_file_only_if_others_cannot_read_it(runner, tmp_path):
    config = tmp_path / "zoo-locked.conf"
    config.write_text("[zoo-locked]\nauth = %s\n" % AUTH)
    config.chmod(0o644)
    refused = runner.raw(["run", "filed"] + runner.conn() + ["--config", str(config), "--", "true"])
    assert refused.returncode == 78 and "chmod o-rwx" in refused.stderr, refused
    assert PASSWORD not in refused.stderr
    config.chmod(0o640)
    ok = runner.raw(["run", "filed"] + runner.conn() + ["--config", str(config), "--", "true"])
    assert ok.returncode == 0, ok
    # The file's credentials are the cluster's: a run with them is refused by nobody, one without them is.
    assert runner.run("filed", ["true"]).returncode == 78


def test_bad_auth_values_name_the_field_not_the_secret(runner):
    for value in ("digest:cluster", "sasl:cluster:" + PASSWORD, "cluster:" + PASSWORD, "digest::" + PASSWORD):
        result = runner.run("badauth", ["true"], env={"ZOO_LOCKED_AUTH": value})
        assert result.returncode == 78, (value, result)
        assert "ZOO_LOCKED_AUTH" in result.stderr and PASSWORD not in result.stderr


def test_no_secret_in_process_list_logs_or_command_environment(runner):
    record, ready = runner.path("runs"), runner.path("ready")
    bg = runner.start("quiet", runner.worker(record=record, ready=ready, sleep=60), "--syslog", env=_auth_env())
    wait_for(lambda: os.path.exists(ready), 15, message="COMMAND to start")
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True).stdout
    assert "zoo-locked" in ps and PASSWORD not in ps
    (start,) = records(record, "start")
    assert "ZOO_LOCKED_AUTH" not in start["env"], "COMMAND must not see the cluster's credentials"
    bg.signal(15)
    result = bg.wait(15)
    assert PASSWORD not in result.stderr + result.stdout
