# -*- coding: utf-8 -*-
"""Bad input to the roles zoolocked.cron.crontab, runner and zookeeper: job lists, variables and inventories
that each role must refuse in its validation, before it changes anything on the host.

Each case is a real ansible-playbook run of the role against localhost (connection local; several inventory
names for the same machine where a case needs a cluster). The run must fail at one of the role's validation
steps (argument specification or its own assert) with a message that names the variable or the job field,
with no traceback, and the files the role manages must be exactly as before: /etc/cron.d/zoo-locked,
/etc/zoo-locked, the runner's virtualenv and link, ZooKeeper's configuration and data directories, and the
system's users and groups (checksums before and after every run).

Where one run honestly shows several bad inputs (the crontab role lists every problem of every job; an
argument specification lists every bad variable), that run gives one row per bad input, each with its own
line of the message. All runs start at once and are collected after, to keep the test short.
"""

import hashlib
import json
import os
import re
import subprocess
import time

from zkharness import REPO_ROOT

VENV_BIN = os.path.join(REPO_ROOT, ".venv", "bin")
PYTHON = os.path.join(VENV_BIN, "python")

# Everything the three roles would create or change on this machine.
WATCHED = [
    "/etc/cron.d/zoo-locked",
    "/etc/zoo-locked",
    "/opt/zoo-locked",
    "/usr/local/bin/zoo-locked",
    "/etc/zookeeper/conf_zoolocked",
    "/var/lib/zookeeper/data",
    "/usr/local/sbin/zookeeper-zoolocked",
    "/etc/passwd",
    "/etc/group",
]

GOOD_JOB = {"name": "invoice", "schedule": "*/5 * * * *", "command": "/usr/local/bin/invoice --all"}
# No cron package or service changes even if validation ever let a bad job through; the crontab file itself
# is proven unchanged by checksum.
CRONTAB_SAFE = {"crontab_manage_cron": False}


def local_host(**hostvars):
    return dict({"ansible_connection": "local", "ansible_python_interpreter": PYTHON}, **hostvars)


def inventory(groups=None, hostvars=None, allvars=None, hosts=("node1",)):
    """A YAML (JSON) inventory: hosts under all, optional groups {name: [hosts]}, host and group variables."""
    hostvars = hostvars or {}
    inv = {"all": {"vars": dict(allvars or {}),
                   "hosts": {h: local_host(**hostvars.get(h, {})) for h in hosts},
                   "children": {}}}
    for name, members in (groups or {}).items():
        inv["all"]["children"][name] = {"hosts": {m: None for m in members}}
    return inv


def row(label, words, stage):
    """One row: its label, the words its line of the message must hold, the validation step that refuses."""
    return {"label": label, "words": words, "stage": stage}


JOBS_STAGE = "Validate the jobs"
# The role lists every problem of every job at once, each on a line naming the job and the field.
CRONTAB_BAD_JOBS = [
    # (job, row) - every job has exactly one problem; the role reports each on its own line.
    (dict(GOOD_JOB), None),
    (dict(GOOD_JOB), row("duplicate job names", ["name: duplicate", "crontab_jobs[0] has the same name"],
                         JOBS_STAGE)),
    (dict(GOOD_JOB, name="report", colour="red"),
     row("unknown job key", ["colour: unknown key", "jobs accept"], JOBS_STAGE)),
    (dict(GOOD_JOB, name="empty", command="  "), row("empty command", ["command: empty"], JOBS_STAGE)),
    (dict(GOOD_JOB, name="two-lines", command="echo one\necho two"),
     row("command with a newline", ["command: contains a newline", "use a script"], JOBS_STAGE)),
    (dict(GOOD_JOB, name="minute61", schedule="61 * * * *"),
     row("schedule minute 61", ["schedule: minute field '61'", "not in 0-59"], JOBS_STAGE)),
    (dict(GOOD_JOB, name="fortnight", schedule="@fortnightly"),
     row("unknown @ schedule", ["schedule: unknown keyword '@fortnightly'", "@hourly"], JOBS_STAGE)),
    (dict(GOOD_JOB, name="four", schedule="* * * *"),
     row("schedule of four fields", ["schedule: expected five fields"], JOBS_STAGE)),
    (dict(GOOD_JOB, name="a/b"),
     row("lock name with /", ["name: 'a/b' is not a valid lock name", "A-Z a-z 0-9"], JOBS_STAGE)),
    (dict(GOOD_JOB, name=".."),
     row("lock name ..", ["name: '..' is not a valid lock name", "not starting with '.'"], JOBS_STAGE)),
    (dict(GOOD_JOB, name="rechnung-\u20ac"), row("lock name with unicode", ["is not a valid lock name"], JOBS_STAGE)),
    (dict(GOOD_JOB, name="y" * 1000),
     row("lock name of 1000 characters", ["is not a valid lock name", "1-100 characters"], JOBS_STAGE)),
    (dict(GOOD_JOB, name="negwait", wait=-1), row("negative wait", ["wait: -1 is not a number of seconds"],
                                                  JOBS_STAGE)),
    (dict(GOOD_JOB, name="zerotimeout", timeout=0), row("timeout 0", ["timeout: 0 is not a number of seconds above 0"],
                                                        JOBS_STAGE)),
    (dict(GOOD_JOB, name="soon", kill_after="soon"),
     row("kill_after not a number", ["kill_after: 'soon' is not a number of seconds"], JOBS_STAGE)),
    (dict(GOOD_JOB, name="shared", lock="shared"),
     row("unknown lock mode", ["lock: 'shared' is not one of", "exclusive"], JOBS_STAGE)),
    (dict(GOOD_JOB, name="unlocked", lock="none", wait=30),
     row("wait on a job with lock none", ["wait: only applies to jobs with lock 'exclusive'"], JOBS_STAGE)),
    (dict(GOOD_JOB, name="baduser", user="bad user"), row("user name with a blank",
                                                          ["user: 'bad user' is not a valid user name"], JOBS_STAGE)),
    (dict(GOOD_JOB, name="badenv", environment={"MY-VAR": "1"}),
     row("job environment variable name with -", ["environment: 'MY-VAR' is not a valid variable name"],
         JOBS_STAGE)),
    (dict(GOOD_JOB, name="slots-maybe", slots="maybe"),
     row("slots not a boolean", ["slots: 'maybe' is not true or false"], JOBS_STAGE)),
    (dict(GOOD_JOB, name="max-delay-unslotted", slots=False, max_delay=60),
     row("max_delay on a job without slots", ["max_delay: only applies to jobs with slots"], JOBS_STAGE)),
    (dict(GOOD_JOB, name="typo-state", state="gone"), row("job state other than present/absent",
                                                          ["state: 'gone' is not one of present, absent"],
                                                          JOBS_STAGE)),
    # A newline in any field would end the cron line early, and Debian's cron would ignore the whole file
    # (issue 18): "$" in a pattern also matched before a final newline.
    (dict(GOOD_JOB, name="nl-user", user="root\n"),
     row("job user with a final newline", ["user: 'root\\n' is not a valid user name", "1-32 of"], JOBS_STAGE)),
    (dict(GOOD_JOB, name="nl-env-name", environment={"TOKEN\n": "x"}),
     row("job environment name with a final newline",
         ["environment: 'TOKEN\\n' is not a valid variable name", "not starting with a digit"], JOBS_STAGE)),
    (dict(GOOD_JOB, name="nl-env-value", environment={"TOKEN": "x\n* * * * * root id"}),
     row("job environment value with a newline", ["environment: TOKEN contains a newline", "from a file"],
         JOBS_STAGE)),
    (dict(GOOD_JOB, name="nl-schedule", schedule="*/5 * * * *\n"),
     row("schedule with a newline", ["schedule: contains a newline", "write the schedule on one line"],
         JOBS_STAGE)),
    (dict(GOOD_JOB, name="nl-name\n"),
     row("job name with a final newline", ["name: 'nl-name\\n' is not a valid lock name"], JOBS_STAGE)),
    (dict(GOOD_JOB, name="esc-command", command="echo \x1b[2J"),
     row("command with an escape character", ["command: contains the control character U+001B", "printf escapes"],
         JOBS_STAGE)),
]
# Each job's line names its index: the row must find its own job's line.
for _index, (_job, _row) in enumerate(CRONTAB_BAD_JOBS):
    if _row:
        _row["words"].insert(0, "(crontab_jobs[%d]):" % _index)

SPEC_STAGE = "Validating arguments against arg spec"
# Both roles' check of the TLS files' contents (the zoolocked.cron.tls_problems filter).
TLS_STAGE = "Check that the CA certificate loads"
# The runner role's check of its session timeout against the servers' tickTime (runner_session_problems).
SESSION_STAGE = "Check the session timeout against the ZooKeeper servers' tickTime"

# Each run: label, role, inventory, play variables, [rows] and optionally the play's hosts (default all); a
# row's words must all be in one line of the message.
RUNS = [
    ("crontab: %d bad jobs in one list" % (len(CRONTAB_BAD_JOBS) - 1), "crontab", inventory(),
     dict(CRONTAB_SAFE, crontab_jobs=[job for job, dummy in CRONTAB_BAD_JOBS]),
     [r for dummy, r in CRONTAB_BAD_JOBS if r]),
    # Problems of the whole file are looked for once every job is fine, so these get runs of their own.
    ("crontab: a command longer than cron reads", "crontab", inventory(),
     dict(CRONTAB_SAFE, crontab_jobs=[dict(GOOD_JOB, command="echo " + "z" * 1200)]),
     [row("command longer than cron reads", ["command: the cron line would be", "put the command in a script"],
          JOBS_STAGE)]),
    ("crontab: environment value with a newline", "crontab", inventory(),
     dict(CRONTAB_SAFE, crontab_jobs=[GOOD_JOB], crontab_environment={"MAILTO": "ops@example.com\nroot"}),
     [row("crontab_environment value with a newline", ["crontab_environment: MAILTO contains a newline"],
          JOBS_STAGE)]),
    ("crontab: file settings with a newline", "crontab", inventory(),
     dict(CRONTAB_SAFE, crontab_jobs=[GOOD_JOB], crontab_environment={"MAILTO\n": "ops@example.com"},
          crontab_runner="/usr/local/bin/zoo-locked\n", crontab_metrics_dir="/var/lib/metrics\n"),
     [row("crontab_environment name with a final newline",
          ["crontab_environment: 'MAILTO\\n' is not a valid variable name", "A-Z a-z 0-9 _"], JOBS_STAGE),
      row("crontab_runner with a final newline",
          ["crontab_runner: '/usr/local/bin/zoo-locked\\n' is not an absolute path on one line",
           "such as /usr/local/bin/zoo-locked"], JOBS_STAGE),
      row("crontab_metrics_dir with a final newline",
          ["crontab_metrics_dir: '/var/lib/metrics\\n' is not an absolute path on one line"], JOBS_STAGE)]),
    ("crontab: default wait not a number", "crontab", inventory(),
     dict(CRONTAB_SAFE, crontab_jobs=[GOOD_JOB], crontab_default_wait="soon"),
     [row("crontab_default_wait not a number", ["job 'invoice'", "wait: 'soon' is not a number of seconds"],
          JOBS_STAGE)]),
    ("crontab: runner not installed", "crontab", inventory(),
     dict(CRONTAB_SAFE, crontab_jobs=[GOOD_JOB], crontab_runner="/nonexistent/zoo-locked"),
     [row("crontab_runner that is not on the node", ["/nonexistent/zoo-locked does not exist on node1",
                                                     "zoolocked.cron.runner role first", "or set crontab_runner"],
          "Check that the runner is installed")]),
    ("crontab: unknown user", "crontab", inventory(),
     dict(CRONTAB_SAFE, crontab_jobs=[dict(GOOD_JOB, user="no-such-user-zl")]),
     [row("job user that does not exist on the node",
          ["Unknown users on node1", "job 'invoice': user: 'no-such-user-zl' does not exist"],
          "Check that every job's user exists")]),
    ("crontab: jobs differing per host", "crontab",
     inventory(hosts=("node1", "node2"), hostvars={
         "node1": {"crontab_jobs": [GOOD_JOB]},
         "node2": {"crontab_jobs": [dict(GOOD_JOB, schedule="*/10 * * * *")]}}),
     dict(CRONTAB_SAFE),
     [row("jobs set per host (node2 differs)", ["different crontabs", "set them for the whole group",
                                                "node1:", "node2:"],
          "Check that every node renders the same crontab")]),
    ("crontab: variables of the wrong type", "crontab", inventory(),
     dict(CRONTAB_SAFE, crontab_jobs="invoice", crontab_state="installed", crontab_check_timezones="maybe"),
     [row("crontab_jobs a string, not a list of jobs", ["crontab_jobs", "unable to convert to dict"], SPEC_STAGE),
      row("crontab_state not present/absent", ["crontab_state", "present, absent", "installed"], SPEC_STAGE),
      row("crontab_check_timezones not a boolean", ["crontab_check_timezones", "bool"], SPEC_STAGE)]),
    ("runner: no ZooKeeper servers", "runner", inventory(groups={"zookeeper": []}), {},
     [row("empty zookeeper group and no runner_zookeeper_hosts",
          ["runner_zookeeper_hosts is empty", "inventory group zookeeper"],
          "Check that the runner knows its ZooKeeper servers")]),
    ("runner: connection settings the runner would refuse", "runner", inventory(),
     {"runner_zookeeper_hosts": ["zk1:99999", "not a host"], "runner_zookeeper_root": "zoo-locked",
      "runner_session_timeout": -5, "runner_connect_timeout": 0},
     [row("runner_zookeeper_hosts with a port out of range", ["runner_zookeeper_hosts", "is not HOST[:PORT]"],
          "Check the connection settings"),
      row("runner_zookeeper_root not absolute", ["runner_zookeeper_root", "absolute ZooKeeper path like /zoo-locked"],
          "Check the connection settings"),
      row("runner_session_timeout negative", ["runner_session_timeout", "between 1 and 600 seconds"],
          "Check the connection settings"),
      row("runner_connect_timeout 0", ["runner_connect_timeout", "between 0.1 and 600 seconds"],
          "Check the connection settings")]),
    ("runner: variables of the wrong type", "runner", inventory(),
     {"runner_zookeeper_hosts": ["zk1:2181"], "runner_session_timeout": "ten", "runner_state": "installed",
      "runner_check_connection": "maybe", "runner_zookeeper_tick_time": "soon"},
     [row("runner_session_timeout not a number", ["runner_session_timeout", "float"], SPEC_STAGE),
      row("runner_state not present/absent", ["runner_state", "present, absent", "installed"], SPEC_STAGE),
      row("runner_check_connection not a boolean", ["runner_check_connection", "bool"], SPEC_STAGE),
      row("runner_zookeeper_tick_time not a number", ["runner_zookeeper_tick_time", "int"], SPEC_STAGE)]),
    # The servers may expire a session up to tickTime/2 + a heartbeat early; the runner kills COMMAND at 0.75 x
    # the session timeout: T >= (tickTime/2 + 0.25 s) / 0.15. No zookeeper group: ZooKeeper's default 2000 ms.
    ("runner: session timeout too short for the default tickTime", "runner", inventory(),
     {"runner_zookeeper_hosts": ["zk1:2181"], "runner_session_timeout": 6},
     [row("runner_session_timeout 6 with the default tickTime (2000 ms)",
          ["runner_session_timeout: 6s is too short", "tickTime 2000ms", "use at least 8.4s",
           "runner_zookeeper_tick_time"], SESSION_STAGE)]),
    # The tickTime is the largest of the zookeeper group (zk2 sets 3000, zk1 the default); the play targets node1 alone.
    ("runner: session timeout too short for the ensemble's tickTime", "runner",
     inventory(hosts=("node1", "zk1", "zk2"), groups={"zookeeper": ["zk1", "zk2"]},
               hostvars={"zk2": {"zookeeper_tick_time": 3000}}),
     {"runner_session_timeout": 10},
     [row("runner_session_timeout 10 (the default) with zookeeper_tick_time 3000 on one host of the zookeeper group",
          ["runner_session_timeout: 10s is too short", "tickTime 3000ms", "use at least 11.7s"], SESSION_STAGE)],
     "node1"),
    ("runner: tickTime out of range", "runner", inventory(),
     {"runner_zookeeper_hosts": ["zk1:2181"], "runner_zookeeper_tick_time": 0},
     [row("runner_zookeeper_tick_time 0",
          ["runner_zookeeper_tick_time must be a whole number of milliseconds from 1 to 60000", "not 0"],
          SESSION_STAGE)]),
    ("runner: credentials and TLS variables", "runner", inventory(),
     {"runner_zookeeper_hosts": ["zk1:2181"], "runner_auth": "cluster:Role-Secret-8f1",
      "runner_tls": True, "runner_tls_client_cert": "/nonexistent/client.crt",
      "runner_tls_client_key_password": "Key-Secret-2b7"},
     [row("runner_auth not digest:USER:PASSWORD", ["runner_auth must be digest:USER:PASSWORD or sasl:USER:PASSWORD", "not shown"],
          "Check the credentials and TLS variables"),
      row("runner_tls_client_cert without runner_tls_client_key",
          ["runner_tls_client_cert and runner_tls_client_key go together"], "Check the credentials and TLS variables"),
      row("runner_tls_client_cert a file that does not exist",
          ["runner_tls_client_cert is neither PEM text nor the absolute path of a file on the controller"],
          "Check the credentials and TLS variables"),
      row("runner_tls_client_key_password without a key",
          ["runner_tls_client_key_password is set without runner_tls_client_key"],
          "Check the credentials and TLS variables")]),
    # TLS files of the right form whose contents do not fit ({pki}: made by openssl for the test, see _pki).
    ("runner: TLS files that do not fit", "runner", inventory(),
     {"runner_zookeeper_hosts": ["zk1:2181"], "runner_tls": True, "runner_tls_ca_cert": "{pki}/key1.pem",
      "runner_tls_client_cert": "{pki}/cert1.pem", "runner_tls_client_key": "{pki}/key2.pem"},
     [row("runner_tls_ca_cert not a certificate", ["runner_tls_ca_cert", "not a PEM CA certificate",
                                                   "set it to the certificate of the CA"], TLS_STAGE),
      row("runner_tls_client_key of another certificate",
          ["runner_tls_client_cert", "runner_tls_client_key", "do not match", "key must belong to the certificate"],
          TLS_STAGE)]),
    ("runner: encrypted client key, wrong password", "runner", inventory(),
     {"runner_zookeeper_hosts": ["zk1:2181"], "runner_tls": True, "runner_tls_client_cert": "{pki}/cert1.pem",
      "runner_tls_client_key": "{pki}/enc1.pem", "runner_tls_client_key_password": "Key-Secret-2b7"},
     [row("runner_tls_client_key_password that does not open the key",
          ["runner_tls_client_key_password does not open runner_tls_client_key", "not shown"], TLS_STAGE)]),
    ("runner: encrypted client key as text, no password", "runner", inventory(),
     {"runner_zookeeper_hosts": ["zk1:2181"], "runner_tls": True, "runner_tls_client_cert": "{pki}/cert1.pem",
      "runner_tls_client_key": "{pem:enc1.pem}"},
     [row("runner_tls_client_key (PEM text) encrypted, without a password",
          ["runner_tls_client_key is encrypted: set runner_tls_client_key_password"], TLS_STAGE)]),
    ("zookeeper: duplicate ids", "zookeeper",
     inventory(hosts=("zk1", "zk2", "zk3"), groups={"zookeeper": ["zk1", "zk2", "zk3"]},
               hostvars={"zk1": {"zookeeper_id": 1}, "zk2": {"zookeeper_id": 1}, "zk3": {"zookeeper_id": 3}}), {},
     [row("two servers with zookeeper_id 1", ["zookeeper_id", "must be unique", "'zk1': 1", "'zk2': 1"],
          "Check the ensemble")]),
    ("zookeeper: id out of range", "zookeeper",
     inventory(hosts=("zk1",), groups={"zookeeper": ["zk1"]}, hostvars={"zk1": {"zookeeper_id": 300}}), {},
     [row("zookeeper_id 300", ["zookeeper_id", "within 1-255", "300"], "Check the ensemble")]),
    ("zookeeper: two servers", "zookeeper",
     inventory(hosts=("zk1", "zk2"), groups={"zookeeper": ["zk1", "zk2"]}), {},
     [row("an ensemble of 2 servers", ["ensemble of 2 servers", "use 1 server, or 3 or more"],
          "Check the ensemble")]),
    # The play targets zk9 alone: zk1 is a fine one-server ensemble and would (rightly) be installed.
    ("zookeeper: host outside the group", "zookeeper",
     inventory(hosts=("zk1", "zk9"), groups={"zookeeper": ["zk1"]}), {},
     [row("role applied to a host outside the zookeeper group", ["zk9 is not in the inventory group zookeeper"],
          "Check the ensemble")], "zk9"),
    ("zookeeper: ports, timings and heap", "zookeeper",
     inventory(hosts=("zk1",), groups={"zookeeper": ["zk1"]}),
     {"zookeeper_client_port": 99999, "zookeeper_election_port": 2888, "zookeeper_tick_time": -5,
      "zookeeper_heap_size": "lots"},
     [row("zookeeper_client_port 99999", ["zookeeper_client_port must be a TCP port between 1 and 65535"],
          "Check the ports, timings and heap size"),
      row("quorum and election ports the same", ["zookeeper_election_port is the same port as zookeeper_quorum_port",
                                                 "give each its own port"], "Check the ports, timings and heap size"),
      row("zookeeper_tick_time negative", ["zookeeper_tick_time must be at least 1"],
          "Check the ports, timings and heap size"),
      row("zookeeper_heap_size not a size", ["zookeeper_heap_size must be a Java heap size such as 256m"],
          "Check the ports, timings and heap size")]),
    # A trailing newline: `$` would have let it through (it matches before a final newline).
    ("zookeeper: heap size ending in a newline", "zookeeper",
     inventory(hosts=("zk1",), groups={"zookeeper": ["zk1"]}), {"zookeeper_heap_size": "256m\n"},
     [row("zookeeper_heap_size ending in a newline", ["zookeeper_heap_size must be a Java heap size such as 256m"],
          "Check the ports, timings and heap size")]),
    ("runner: credentials ending in a newline", "runner", inventory(),
     {"runner_zookeeper_hosts": ["zk1:2181"], "runner_auth": "digest:cluster:Role-Secret-8f1\n"},
     [row("runner_auth ending in a newline", ["runner_auth must be digest:USER:PASSWORD or sasl:USER:PASSWORD",
                                              "one line", "not shown"], "Check the credentials and TLS variables")]),
    ("zookeeper: TLS files that do not fit", "zookeeper",
     inventory(hosts=("zk1",), groups={"zookeeper": ["zk1"]}),
     {"zookeeper_tls": True, "zookeeper_tls_ca_cert": "{pem:key1.pem}", "zookeeper_tls_cert": "{pki}/cert1.pem",
      "zookeeper_tls_key": "{pki}/key2.pem"},
     [row("zookeeper_tls_ca_cert (PEM text) not a certificate",
          ["zookeeper_tls_ca_cert: not a PEM CA certificate"], TLS_STAGE),
      row("zookeeper_tls_key of another certificate",
          ["zookeeper_tls_cert", "zookeeper_tls_key", "do not match", "key must belong to the certificate"],
          TLS_STAGE)]),
    ("zookeeper: encrypted server key", "zookeeper",
     inventory(hosts=("zk1",), groups={"zookeeper": ["zk1"]}),
     {"zookeeper_tls": True, "zookeeper_tls_ca_cert": "{pki}/cert2.pem", "zookeeper_tls_cert": "{pki}/cert1.pem",
      "zookeeper_tls_key": "{pki}/enc1.pem"},
     [row("zookeeper_tls_key encrypted", ["zookeeper_tls_key", "is encrypted",
                                          "ZooKeeper reads only unencrypted keys", "openssl pkey"], TLS_STAGE)]),
    ("zookeeper: SASL users the JAAS file cannot hold", "zookeeper",
     inventory(hosts=("zk1",), groups={"zookeeper": ["zk1"]}),
     {"zookeeper_sasl_users": {"ops team": "Role-Secret-8f1", "ops": 'say "Role-Secret-8f1"',
                               "jobs\n": "Role-Secret-8f1"}},
     [row("zookeeper_sasl_users: a user name with a blank",
          ['zookeeper_sasl_users has the user name "ops team"', "only letters, digits"], "Check the SASL users"),
      row("zookeeper_sasl_users: a user name ending in a newline",
          ['zookeeper_sasl_users has the user name "jobs\\n"', "only letters, digits"], "Check the SASL users"),
      row("zookeeper_sasl_users: a password with a quote",
          ['zookeeper_sasl_users has a password for "ops"', "one line without \" or \\", "not shown"],
          "Check the SASL users")]),
    ("zookeeper: variables of the wrong type", "zookeeper",
     inventory(hosts=("zk1",), groups={"zookeeper": ["zk1"]}),
     {"zookeeper_client_port": "twenty", "zookeeper_service_manager": "upstart"},
     [row("zookeeper_client_port not a number", ["zookeeper_client_port", "int"], SPEC_STAGE),
      row("zookeeper_service_manager unknown", ["zookeeper_service_manager", "auto, systemd, none", "upstart"],
          SPEC_STAGE)]),
]
# The passwords, and any private key's text.
SECRETS = ("Role-Secret-8f1", "Key-Secret-2b7", "Pki-Secret-5d3", "PRIVATE KEY-----")


def _pki(tmp):
    """Two self-signed certificates with their keys, and key1 encrypted (password Pki-Secret-5d3), in TMP/pki;
    play variables say {pki} for that folder and {pem:NAME} for a file's text."""
    pki = os.path.join(tmp, "pki")
    os.makedirs(pki)
    for n in ("1", "2"):
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                        "-nodes", "-keyout", os.path.join(pki, "key%s.pem" % n), "-out",
                        os.path.join(pki, "cert%s.pem" % n), "-subj", "/CN=zl-node%s" % n, "-days", "1"],
                       check=True, capture_output=True)
    subprocess.run(["openssl", "pkey", "-in", os.path.join(pki, "key1.pem"), "-aes256", "-passout",
                    "pass:Pki-Secret-5d3", "-out", os.path.join(pki, "enc1.pem")], check=True, capture_output=True)
    return pki


def _fill_pki(play_vars, pki):
    def fill(value):
        if isinstance(value, str) and value.startswith("{pem:"):
            with open(os.path.join(pki, value[5:-1])) as handle:
                return handle.read()
        return value.replace("{pki}", pki) if isinstance(value, str) else value
    return {key: fill(value) for key, value in play_vars.items()}


def fingerprint(paths=tuple(WATCHED)):
    """path -> 'absent', or a digest of the file, or of a directory's whole tree (names, modes, contents)."""
    prints = {}
    for path in paths:
        if not os.path.lexists(path):
            prints[path] = "absent"
            continue
        digest = hashlib.sha256()
        walk = [(path, [], [os.path.basename(path)])] if not os.path.isdir(path) else os.walk(path)
        for top, dirs, files in walk:
            dirs.sort()
            for name in sorted(files) + sorted(dirs):
                full = os.path.join(top, name) if os.path.isdir(path) else path
                st = os.lstat(full)
                digest.update(("%s %o %d %d\n" % (full, st.st_mode, st.st_uid, st.st_gid)).encode())
                if os.path.isfile(full) and not os.path.islink(full):
                    with open(full, "rb") as handle:
                        digest.update(handle.read())
        prints[path] = digest.hexdigest()[:16]
    return prints


# The runs see the system's directories read-only (a private mount namespace): should a role ever fail to
# refuse a case, it still could not install or start anything on this machine. The proof that validation
# stopped it is separate: the play fails at the validation step and no task before reports a change.
READ_ONLY = """set -e
for d in /etc /opt /usr /var /run /srv /home /boot; do
  if [ -d "$d" ] && [ ! -L "$d" ]; then mount --bind "$d" "$d" && mount -o remount,bind,ro "$d"; fi
done
exec "$@"
"""
GUARD = ["unshare", "--mount", "--propagation", "private", "sh", "-c", READ_ONLY, "sh"]


def _start(label, role, inv, play_vars, tmp, collections, hosts="all"):
    work = os.path.join(tmp, re.sub(r"\W+", "-", label))
    os.makedirs(work)
    inventory_file = os.path.join(work, "inventory.yml")
    with open(inventory_file, "w") as handle:
        json.dump(inv, handle)
    playbook = os.path.join(work, "playbook.yml")
    with open(playbook, "w") as handle:
        json.dump([{"name": label, "hosts": hosts, "gather_facts": False, "vars": play_vars,
                    "roles": [{"role": "zoolocked.cron.%s" % role}]}], handle)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANSIBLE_", "ZOO_LOCKED_"))}
    env.update({
        "ANSIBLE_COLLECTIONS_PATH": collections,
        "ANSIBLE_HOME": os.path.join(work, "ansible-home"),
        "ANSIBLE_LOCAL_TEMP": os.path.join(work, "local-tmp"),
        "ANSIBLE_REMOTE_TEMP": os.path.join(work, "remote-tmp"),
        "ANSIBLE_STDOUT_CALLBACK": "ansible.posix.json",
        "ANSIBLE_RETRY_FILES_ENABLED": "0",
        "ANSIBLE_DEPRECATION_WARNINGS": "0",
        "ANSIBLE_NOCOLOR": "1",
        # One process per task instead of several (temporary directory, copy, run, clean up).
        "ANSIBLE_PIPELINING": "1",
        "PATH": VENV_BIN + os.pathsep + os.environ.get("PATH", ""),
    })
    out = open(os.path.join(work, "output.json"), "w+")
    err = open(os.path.join(work, "stderr.txt"), "w+")
    proc = subprocess.Popen(GUARD + [os.path.join(VENV_BIN, "ansible-playbook"), "-i", inventory_file, playbook],
                            stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=env, cwd=work,
                            start_new_session=True)
    return proc, out, err


def _failures(report):
    """[(task name, host, message)] of the failed tasks in an ansible.posix.json report, and the tasks that
    reported a change."""
    failed, changed = [], []
    for play in report.get("plays", []):
        for task in play.get("tasks", []):
            for host, result in task.get("hosts", {}).items():
                if result.get("failed"):
                    failed.append((task["task"]["name"], host, result.get("msg") or ""))
                if result.get("changed"):
                    changed.append((task["task"]["name"], host))
    return failed, changed


def test_roles_refuse_bad_input(tmp_path, collections_path, bad_input_table):
    # The guard works: under it, /etc is not writable.
    probe = subprocess.run(GUARD + ["sh", "-c", "test -w /etc || echo guarded"], check=False, capture_output=True,
                           text=True)
    assert probe.stdout.strip() == "guarded", ("the read-only guard does not work here", probe)
    before = fingerprint()
    started = time.monotonic()
    pki = _pki(str(tmp_path))
    running = [(run, _start(run[0], run[1], run[2], _fill_pki(run[3], pki), str(tmp_path), collections_path,
                            *run[5:]))
               for run in RUNS]
    results = []
    for run, (proc, out, err) in running:
        try:
            rc = proc.wait(180)
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = None
        out.seek(0)
        err.seek(0)
        results.append((run, rc, out.read(), err.read()))
    elapsed = time.monotonic() - started
    after = fingerprint()
    print("%d role runs in %.1fs" % (len(RUNS), elapsed))
    assert after == before, {p: (before[p], after[p]) for p in before if before[p] != after[p]}

    problems = []
    rows = []
    for run, rc, output, stderr in results:
        label, role, expected = run[0], run[1], run[4]
        if "Traceback" in output + stderr:
            problems.append("%s: a traceback in the output:\n%s\n%s" % (label, output[-2000:], stderr[-2000:]))
        for secret in SECRETS:
            if secret in output + stderr:
                problems.append("%s: the secret %s is in the output" % (label, secret))
        try:
            report = json.loads(output)
        except ValueError:
            problems.append("%s: rc %s, no JSON report:\n%s\n%s" % (label, rc, output[-2000:], stderr[-2000:]))
            continue
        failures, changed = _failures(report)
        if changed:
            problems.append("%s: tasks reported changes: %s" % (label, changed))
        if rc == 0 or not failures:
            problems.append("%s: not refused (rc %s):\n%s" % (label, rc, output[-3000:]))
            continue
        for expect in expected:
            found = None
            for task, host, message in failures:
                if expect["stage"] not in task:
                    continue
                # A line of the message, else a sentence of it (where the role lists its problems as sentences).
                lines = message.splitlines()
                sentences = [p for line in lines for p in re.split(r"(?<=\.) (?=[a-z]+_[a-z_]+ )", line)]
                for piece in sorted(set(lines + sentences), key=len):
                    if all(word in piece for word in expect["words"]):
                        found = (task, host, piece)
                        break
                if found:
                    break
            if not found:
                problems.append("%s / %s: no failure of %r holding %s; failures: %s"
                                % (label, expect["label"], expect["stage"], expect["words"], failures))
                continue
            task, host, line = found
            rows.append((role, expect["label"], label, task, line.replace(pki, "{pki}")))
    assert not problems, "\n\n".join(problems)
    proof = "stopped at validation, no task changed anything; %s, passwd, group: same checksums"
    for role, bad, run_label, task, line in rows:
        watched = {"crontab": "/etc/cron.d/zoo-locked", "runner": "/etc/zoo-locked, /opt/zoo-locked, the link",
                   "zookeeper": "ZooKeeper's conf and data dirs"}[role]
        step = "argument spec" if SPEC_STAGE in task else "assert: " + task.split(" : ", 1)[-1].split(" (")[0][:50]
        bad_input_table.add("role %s" % role, "%s (run: %s)" % (bad, run_label), "play failed (%s)" % step,
                            line, proof % watched)
