# -*- coding: utf-8 -*-
"""A randomized fault run with a history checker, in the spirit of Jepsen (issue 13): ``make soak``.

    .venv/bin/python tests/soak/soak.py [--minutes M | --seconds S] [--seed N] [--nodes N] [--keep-history]
                                        [--no-docs] [--figures FILE]
    .venv/bin/python tests/soak/soak.py --check FOLDER      # run the checker again on a kept history

The cluster is one machine: a three-server ZooKeeper ensemble (tests/zkensemble.py, tickTime 500 ms, every
server's quorum links proxied so that any follower can be cut off from the leader) and N *nodes*. A node is a
name, three proxies of its own (tests/tcpproxy.py's RequestProxy, one per server: a node can be cut off, or have
its connections reset on its Nth write), an environment (its wall clock, which libfaketime can skew) and a stderr
reader that can get stuck. Every few seconds each job is fired on every node at once, as cron would (``zoo-locked
run JOB --hosts <the node's proxies> ... -- TICKER``); a playbook "controller" takes and releases job locks: the
first time and then about one in three through a real ``ansible-playbook`` run on localhost (``zoolocked.cron.lock``:
acquire, pause, release; a callback plugin stamps each task's start and result), the others through
``_hold.lock_task`` (the lock module's code, in a helper process, as the module runs it).

Every COMMAND (and each child and setsid daemon it starts) is a ticker: it writes its node, job, slot,
ZOO_LOCKED_TOKEN, runner, pid and role, then a time stamp every 25 ms, into a file of its own under
``HISTORY/ticks`` (append-only, one file per process). The harness writes every fault it injects
(``faults.jsonl``: kind, target, start, end; ``plan.json``: what the seed planned), every runner's exit code and
stderr (``runners.jsonl``), the playbook's holds (``holds.jsonl``; each ansible-playbook run's playbook, task
times and output under ``ansible/``), snapshots of the run records taken every 2 s
during the run (``seen.json``: pruning deletes old ones before the end) and, at the end, the run records from
``zoo-locked history`` and what was left in ZooKeeper and on the machine (``records.json``, ``final.json``).

The nemesis (seeded: the plan of faults is a function of the seed; the targets are picked at run time, from a seeded
generator too) injects, overlapping in time: SIGKILL of a runner, SIGKILL of its process group, SIGSTOP for longer
than the session then SIGCONT, a node cut off from the ensemble (its proxies frozen), a follower cut off from the
leader, a server killed and restarted (often the leader), the whole ensemble down for longer than the session,
connection resets (at once, or on the Nth create/delete/multi a node sends, before or after forwarding it), a node's
stderr reader stuck (the job "flood" fills the pipe to the brim), a node's clock off by 5-25 s (libfaketime in its
runners, tests/faketime.py: the whole runner sees the skewed wall clock, its COMMAND the real one; only the
--schedule job "minutely" computes its slot from the clock), and forced releases of job locks (``state=released
force=true``; through ansible-playbook until one found a lock, then about one in three; a run of a minute or more
plans three at least). Every kind is planned once in the first ~25 s; runner faults aim at runners that hold a lock,
partitions and stuck readers at their nodes, most of the time; a fault that finds nothing to act on is tried again 3
s later (twice at most).

The checker (``check``; a pure function of the history folder) fails the run on:

1. two holders of one job (COMMANDs with their children and daemons; a holder's interval is [first tick,
   last tick] of all its processes; a playbook hold counts from the moment its acquire returned (``lock_task``
   returned, or the acquire task's result reached ansible-playbook) to the moment its release began (the call,
   or the release task, started), when the release found its node still there) ticking at overlapping times;
2. a holder whose token is not greater than its predecessor's (holders ordered by first tick);
3. a slot run successfully more than once (by runner exit codes and ticks, and by its run record; a re-run
   after an outcome its runner logged it could not record is the documented at-least-once case, counted
   apart), a COMMAND that ran for a slot without an attempt in its record, attempts whose tokens do not
   increase, a slot not accounted for (no record although a runner exited 0 or a COMMAND ran; records pruned
   by --keep are checked against their last snapshot), pruning that kept a record older than one it deleted;
4. anything still running or locked after the nemesis stopped and the cluster settled: runners, marked
   processes, contender nodes, run records beyond --keep, a job that cannot run once more;
5. a runner exit code outside the documented table, or 'Traceback' / 'internal error' in runner stderr
   (and an internal error of the lock module's code).

Output: the seed first; at the end a table of faults by kind, runs by exit code, slots, and the violations.
Exit status 1 on any violation; the history folder is kept then (and with --keep-history). A run without
violations writes its figures into docs/reliability.md, section "Randomized faults (make soak)", between markers
(not with --no-docs; tests/soak/test_soak.py writes its two seeds' there with ZOO_LOCKED_WRITE_DOCS=1).
"""

import argparse
import collections
import glob
import json
import os
import random
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
import traceback
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
TESTS = os.path.dirname(HERE)
REPO = os.path.dirname(TESTS)
sys.path.insert(0, TESTS)

import zkharness  # noqa: E402
from faketime import REAL_CLOCK, skewed_env  # noqa: E402
from tcpproxy import RequestProxy, Trigger  # noqa: E402
from zkharness import MARK_VAR, ZOO_LOCKED  # noqa: E402

# The package zoo_locked beside the runner under test (BIN/../lib/zoo-locked, as the launcher finds it): the lock
# module's code is taken from there too, so that both halves of a run test the same code.
LIB = os.path.join(os.path.dirname(os.path.dirname(os.path.realpath(ZOO_LOCKED))), "lib", "zoo-locked")
TICK_TIME_MS = 500
DEFAULT_SESSION_TIMEOUT = 4.0
CONNECT_TIMEOUT = 3.0
TICK = 0.025  # seconds between a ticker's stamps

# The runner's exit codes (README.md, "Exit codes"): besides these, COMMAND's own code and 128+N.
DOCUMENTED_EXITS = {0: "ok", 64: "usage", 69: "unavailable", 70: "lock lost", 75: "lock held", 78: "config",
                    124: "timeout", 126: "not executable", 127: "not found"}
# Documented, but nothing in this run gives them a cause: seeing one means the harness is broken.
NOT_CAUSED_HERE = {64, 78, 126, 127}
FAIL_EXIT = 3  # the code a failing COMMAND exits with

# The jobs: fired every `period` seconds (+-20 %) on every node at once. dur: COMMAND's run time; waits: the
# --wait values one fire picks from (the same on every node, as one crontab line); ignore_term, child, fail:
# the share of fires whose COMMAND ignores SIGTERM, starts a child in its group that outlives it, exits 3.
JOBS = collections.OrderedDict([
    ("short", dict(period=4.0, dur=(0.2, 0.2), waits=(0,))),
    ("long", dict(period=10.0, dur=(5.0, 10.0), waits=(0, 6), ignore_term=0.5, timeout=8.5, kill_after=1.0)),
    ("daemon", dict(period=10.0, dur=(0.5, 3.0), waits=(0, 4), daemon=True)),
    ("flood", dict(period=9.0, dur=(2.0, 5.0), waits=(0, 3), flood=True, child=0.5)),
    ("slots", dict(period=4.0, dur=(0.2, 1.0), waits=(6,), slotted=True, fail=0.15, retry_failed=True, keep=1000)),
    ("slots-long", dict(period=10.0, dur=(4.0, 7.0), waits=(12,), slotted=True, keep=5, max_delay=10.0,
                        ignore_term=0.5, child=0.5, kill_after=2.0)),
    ("minutely", dict(schedule="* * * * *", dur=(0.5, 2.0), waits=(20,), slotted=True, keep=1000)),
])
PLAYBOOK_JOBS = ("short", "slots", "long")
PLAYBOOK_OWNER = "soak-playbook"
NEMESIS_OWNER = "soak-nemesis"
HOLD_LEASE = 8.0
# Through ansible-playbook (zoolocked.cron.lock): the first playbook hold and forced release of a run, then about
# one in three (an ansible-playbook run costs a few CPU seconds). Its lease covers Ansible's time between tasks.
ANSIBLE_SHARE = 1.0 / 3
ANSIBLE_LEASE = 15.0
ANSIBLE_PLAYBOOK = os.path.join(REPO, ".venv", "bin", "ansible-playbook")
ANSIBLE_PYTHON = os.path.join(REPO, ".venv", "bin", "python")

# kind: weight in the plan.
FAULTS = collections.OrderedDict([
    ("kill-runner", 3.0), ("kill-group", 2.0), ("stop-runner", 2.0), ("partition-node", 3.0),
    ("cut-follower", 1.5), ("kill-server", 1.5), ("ensemble-down", 0.4), ("blip", 2.0), ("blip-on-write", 3.0),
    ("stderr-stuck", 1.5), ("clock-offset", 1.0), ("force-release", 2.0),
])
OPCODES = {1: "create", 2: "delete", 5: "setData", 14: "multi", 15: "create2"}
MEAN_FAULT_GAP = 2.0  # seconds between two faults' starts, on average


# --- the COMMAND: a ticker ------------------------------------------------------------------------------

TICKER_SOURCE = r'''
"""The soak run's COMMAND (tests/soak/soak.py): stamps who it is, then the time every 25 ms, into a file of its own.

ticker.py --dir DIR --for SECONDS --exit CODE [--ignore-term] [--child SECONDS] [--daemon] [--flood]
Node, job, slot and run come from SOAK_NODE, SOAK_JOB, SOAK_SLOT, SOAK_RUN; the token from ZOO_LOCKED_TOKEN.
Lines: "H {json header}", "S t" (start), "T t" (tick), "G t" (SIGTERM, ignored), "E t code" (end).
"""
import json, os, signal, sys, threading, time

TICK = 0.025


def main():
    argv, opts, flags = sys.argv[1:], {}, set()
    at = 0
    while at < len(argv):
        if argv[at] in ("--dir", "--for", "--exit", "--child"):
            opts[argv[at]] = argv[at + 1]
            at += 2
        else:
            flags.add(argv[at])
            at += 1
    folder = opts["--dir"]
    env = os.environ

    def open_log(role):
        name = "%s.%s.%s.%d.%s.t" % (env.get("SOAK_NODE", "x"), env.get("SOAK_JOB", "x"), role, os.getpid(),
                                     os.urandom(4).hex())
        fd = os.open(os.path.join(folder, name), os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL, 0o644)
        header = {"node": env.get("SOAK_NODE"), "job": env.get("SOAK_JOB"), "slot": env.get("SOAK_SLOT") or None,
                  "run": int(env.get("SOAK_RUN", "-1")), "token": env.get("ZOO_LOCKED_TOKEN"),
                  "holder": env.get("ZOO_LOCKED_HOLDER"), "pid": os.getpid(), "ppid": os.getppid(),
                  "pgid": os.getpgid(0), "sid": os.getsid(0), "role": role}
        os.write(fd, b"H " + json.dumps(header, sort_keys=True).encode() + b"\n")
        os.write(fd, b"S %.6f\n" % time.time())
        return fd

    def tick_for(fd, seconds):
        end = time.monotonic() + seconds
        while True:
            os.write(fd, b"T %.6f\n" % time.time())
            left = end - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(TICK, left))

    fd = open_log("main")
    if "--ignore-term" in flags:
        signal.signal(signal.SIGTERM, lambda signum, frame: os.write(fd, b"G %.6f\n" % time.time()))
    if "--daemon" in flags:  # a daemon: out of the group and the session, stdio closed, ticks until killed
        r, w = os.pipe()
        if os.fork() == 0:
            try:
                os.close(r)
                os.setsid()
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                null = os.open(os.devnull, os.O_RDWR)
                for std in (0, 1, 2):
                    os.dup2(null, std)
                dfd = open_log("daemon")
                os.write(w, b"!")
                os.close(w)
                tick_for(dfd, 900.0)
            finally:
                os._exit(0)
        os.close(w)
        os.read(r, 1)
        os.close(r)
    if "--child" in opts:  # a child in COMMAND's group that outlives it
        if os.fork() == 0:
            try:
                cfd = open_log("child")
                tick_for(cfd, float(opts["--child"]))
                os.write(cfd, b"E %.6f 0\n" % time.time())
            finally:
                os._exit(0)
    if "--flood" in flags:  # fills the runner's stderr pipe to the brim when nobody reads it; ticks go on
        def flood():
            line = b"soak-flood " + b"x" * 52 + b"\n"  # 64 bytes: the pipe is left with less room than a log line
            try:
                out = os.open("/proc/self/fd/2", os.O_WRONLY | os.O_NONBLOCK)  # our own description of the pipe
            except OSError:
                out = 2
            while True:
                try:
                    for dummy in range(16):
                        os.write(out, line)
                except BlockingIOError:
                    pass
                except OSError:
                    return
                time.sleep(0.02)
        threading.Thread(target=flood, daemon=True).start()
    tick_for(fd, float(opts.get("--for", "0.2")))
    code = int(opts.get("--exit", "0"))
    os.write(fd, b"E %.6f %d\n" % (time.time(), code))
    os._exit(code)


main()
'''

# The lock module's code, as the module runs it (a process of its own: the holder is forked from it).
LOCK_TASK_SOURCE = r'''
import json, sys, time, traceback
sys.path.insert(0, sys.argv[1])
from zoo_locked import _common, _hold
params = dict((key, None) for key in _common.connection_argument_spec())
# The lock module's own options, with its argument spec's defaults (plugins/modules/lock.py).
params.update(name=None, state="acquired", wait=0.0, lease=3600.0, owner=None, purpose=None, force=False)
params.update(json.loads(sys.argv[2]))
out = {"t0": time.time()}
try:
    out["result"] = _hold.lock_task(params, False)
except _hold.TaskError as exc:
    out["error"] = str(exc)
except Exception:
    out["crash"] = traceback.format_exc()
out["t1"] = time.time()
sys.stdout.write(json.dumps(out) + "\n")
'''

# A callback plugin for the ansible-playbook runs: when each task started, and when and what it returned.
CALLBACK_SOURCE = r'''
"""The soak run's Ansible callback (tests/soak/soak.py): one JSON line per task start and task result."""
import json
import os
import time

from ansible.plugins.callback import CallbackBase


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "soak_times"
    CALLBACK_NEEDS_ENABLED = True

    def _write(self, event, task, result=None):
        line = {"event": event, "task": task.get_name(), "t": time.time()}
        if result is not None:
            line["result"] = dict(getattr(result, "result", None) or result._result)
        with open(os.environ["SOAK_TASK_LOG"], "a") as handle:
            handle.write(json.dumps(line, default=str) + "\n")

    def v2_playbook_on_task_start(self, task, is_conditional):
        self._write("start", task)

    def v2_runner_on_ok(self, result):
        self._write("ok", result._task, result)

    def v2_runner_on_failed(self, result, ignore_errors=False):
        self._write("failed", result._task, result)

    def v2_runner_on_unreachable(self, result):
        self._write("failed", result._task, result)

    def v2_runner_on_skipped(self, result):
        self._write("skipped", result._task)
'''


# --- the checker: a pure function of the history --------------------------------------------------------


def _read_jsonl(path):
    out = []
    try:
        with open(path) as handle:
            for line in handle:
                line = line.strip()
                if line:
                    out.append(json.loads(line))
    except FileNotFoundError:
        pass
    return out


def _read_json(path, default):
    try:
        with open(path) as handle:
            return json.load(handle)
    except FileNotFoundError:
        return default


def parse_tick_file(path):
    """One process of a COMMAND: its header, first and last stamp, count, end code (None: it did not end itself)."""
    header, first, last, count, ended, termed = None, None, None, 0, None, 0
    with open(path, "rb") as handle:
        for raw in handle:
            if not raw.endswith(b"\n"):
                break  # a line being written when the process died
            kind, dummy, rest = raw.partition(b" ")
            if kind == b"H":
                try:
                    header = json.loads(rest.decode("utf-8"))
                except ValueError:
                    return None
                continue
            fields = rest.split()
            try:
                stamp = float(fields[0])
            except (IndexError, ValueError):
                continue
            count += 1
            first = stamp if first is None else min(first, stamp)
            last = stamp if last is None else max(last, stamp)
            if kind == b"E" and len(fields) > 1:
                ended = int(fields[1])
            elif kind == b"G":
                termed += 1
    if header is None:
        return None
    return dict(header, first=first, last=last, ticks=count, exit=ended, termed=termed, file=os.path.basename(path))


def load_history(folder):
    """The history of a run, as check() takes it."""
    procs = []
    for path in sorted(glob.glob(os.path.join(folder, "ticks", "*.t"))):
        proc = parse_tick_file(path)
        if proc is not None:
            procs.append(proc)
    return {
        "folder": folder,
        "meta": _read_json(os.path.join(folder, "meta.json"), {}),
        "procs": procs,
        "runners": _read_jsonl(os.path.join(folder, "runners.jsonl")),
        "holds": _read_jsonl(os.path.join(folder, "holds.jsonl")),
        "faults": _read_jsonl(os.path.join(folder, "faults.jsonl")),
        "records": _read_json(os.path.join(folder, "records.json"), {}),
        "seen": _read_json(os.path.join(folder, "seen.json"), {}),
        "final": _read_json(os.path.join(folder, "final.json"), {}),
    }


def _violation(found, check, message, **details):
    found.append(dict(check=check, message=message, **details))


def _holders(history, found):
    """{job: [holder]}: one holder per token (a COMMAND and everything it started), and the confirmed playbook
    holds; each {job, token, start, end, kind, node, run, slot, procs}."""
    by_token = {}
    for proc in history["procs"]:
        if proc.get("first") is None:
            continue
        job, token = proc.get("job"), proc.get("token")
        if not token or not str(token).isdigit():
            _violation(found, 1, "a COMMAND process of job %s ticked without a fencing token (ZOO_LOCKED_TOKEN=%r)"
                       % (job, token), file=proc.get("file"))
            continue
        holder = by_token.setdefault((job, int(token)), {
            "job": job, "token": int(token), "start": proc["first"], "end": proc["last"], "kind": "run",
            "node": proc.get("node"), "run": proc.get("run"), "slot": proc.get("slot"), "procs": []})
        if proc.get("run") != holder["run"]:
            _violation(found, 2, "job %s: token %s was given to two runs (%s and %s)"
                       % (job, token, holder["run"], proc.get("run")), token=int(token))
        holder["start"] = min(holder["start"], proc["first"])
        holder["end"] = max(holder["end"], proc["last"])
        holder["procs"].append({"role": proc.get("role"), "pid": proc.get("pid"), "first": proc["first"],
                                "last": proc["last"], "ended": proc.get("exit") is not None})
    jobs = {}
    for holder in by_token.values():
        jobs.setdefault(holder["job"], []).append(holder)
    for hold in history["holds"]:
        if hold.get("confirmed") and hold.get("token") is not None and hold.get("end") is not None:
            jobs.setdefault(hold["job"], []).append({
                "job": hold["job"], "token": int(hold["token"]), "start": hold["start"], "end": hold["end"],
                "kind": "hold", "node": "playbook", "run": None, "slot": None, "procs": []})
    for holders in jobs.values():
        holders.sort(key=lambda h: (h["start"], h["token"]))
    return jobs


def _who(holder):
    if holder["kind"] == "hold":
        return "playbook hold (token %d)" % holder["token"]
    return "run %s on %s (token %d%s)" % (holder["run"], holder["node"], holder["token"],
                                          ", slot %s" % holder["slot"] if holder["slot"] else "")


def _ending(holder, runners):
    """What ended a holder: the case of a hand-over, for the closest-gap figures."""
    if holder["kind"] == "hold":
        return "a playbook hold released"
    runner = runners.get(holder["run"]) or {}
    # Signals sent to the runner while its COMMAND was still ticking (a kill during the release is no cause).
    sent = [s[0] for s in runner.get("signals") or [] if s[1] <= holder["end"]]
    if "KILL" in sent:
        return "its runner SIGKILLed"
    if "STOP" in sent:
        return "its runner SIGSTOPped"
    if runner.get("rc") == 70:
        text = runner.get("stderr") or ""
        if "revoked by" in text:
            return "revoked (forced release)"
        released = [line for line in text.splitlines() if line.startswith("zoo-locked: released ")]
        if not released:
            return "lock lost (exit 70), release not logged"
        if "already gone" in released[-1]:
            return "lock lost (exit 70), node gone or ZK silent"  # at its release: expired, or no answer
        return "lock lost (exit 70), released by its runner"
    if runner.get("rc") == 124:
        return "--timeout (exit 124)"
    return "COMMAND ended"


def _check_overlaps(jobs, found, closest, runners=None):
    runners = runners or {}
    for job, holders in sorted(jobs.items()):
        latest = None  # the holder whose interval ends last so far
        for holder in holders:
            if latest is not None:
                gap = holder["start"] - latest["end"]
                key = _ending(latest, runners)
                count = closest[key]["n"] if key in closest else 0
                if key not in closest or gap < closest[key]["gap"]:
                    closest[key] = {"gap": gap, "job": job, "before": _who(latest), "after": _who(holder)}
                closest[key]["n"] = count + 1
            if latest is not None and holder["start"] <= latest["end"]:
                late = [p for p in latest["procs"] if p["last"] >= holder["start"]]
                _violation(found, 1, "job %s: %s ticked until %.3f s after %s started (%s)" % (
                    job, _who(latest), latest["end"] - holder["start"], _who(holder),
                    ", ".join("%s pid %s last tick %.3f" % (p["role"], p["pid"], p["last"]) for p in late)
                    or "its hold"), job=job, overlap=round(latest["end"] - holder["start"], 3),
                    tokens=[latest["token"], holder["token"]], at=holder["start"])
            if latest is None or holder["end"] > latest["end"]:
                latest = holder


def _check_tokens(jobs, found):
    for job, holders in sorted(jobs.items()):
        for before, after in zip(holders, holders[1:]):
            if after["token"] <= before["token"]:
                _violation(found, 2, "job %s: %s started after %s but its token is not greater (%d <= %d)" % (
                    job, _who(after), _who(before), after["token"], before["token"]), job=job,
                    tokens=[before["token"], after["token"]], at=after["start"])


def _slot_accounting(history, jobs, found):
    """Check 3; returns {job: {counter: n}} for the summary."""
    meta_jobs = history["meta"].get("jobs", {})
    runners = [r for r in history["runners"] if r.get("slot") is not None]
    by_slot = collections.OrderedDict()
    for runner in sorted(runners, key=lambda r: r.get("start") or 0):
        by_slot.setdefault((runner["job"], runner["slot"]), []).append(runner)
    ran = {}  # (job, slot) -> {token: holder}
    for job, holders in jobs.items():
        for holder in holders:
            if holder["kind"] == "run" and holder["slot"] is not None:
                ran.setdefault((job, holder["slot"]), {})[holder["token"]] = holder
    for key in ran:
        if key not in by_slot:
            by_slot[key] = []
    stats = {}
    records = history["records"]
    for (job, slot), fired in by_slot.items():
        counts = stats.setdefault(job, collections.Counter())
        counts["slots"] += 1
        config = meta_jobs.get(job, {})
        job_records = records.get(job)
        if isinstance(job_records, dict) and "error" in job_records:
            job_records = None
        record = None
        if isinstance(job_records, list):
            record = next((r for r in job_records if r.get("slot") == slot), None)
        tokens = ran.get((job, slot), {})
        snapshot = (history.get("seen") or {}).get(job, {}).get(slot)
        snapshot_at = None
        if record is None and snapshot is not None and isinstance(job_records, list):
            # Pruned (--keep) before the end: checked against what it said when last seen during the run.
            record, snapshot_at = snapshot["record"], snapshot["at"]
        runs_by_id = dict((r["id"], r) for r in fired)
        # Successful runs (COMMAND ran, the runner exited 0), in the order their COMMANDs started. A run before the
        # last one is documented only if its runner said it could not record the outcome (docs/architecture.md,
        # "Slots": the next holder then takes the attempt for died and runs the slot again).
        ok_runs = [h["run"] for h in sorted(tokens.values(), key=lambda h: h["start"])
                   if runs_by_id.get(h["run"], {}).get("rc") == 0]
        if len(ok_runs) > 1:
            unrecorded = [rid for rid in ok_runs[:-1]
                          if "could not record the end of the run" in (runs_by_id[rid].get("stderr") or "")]
            if len(unrecorded) == len(ok_runs) - 1:
                counts["re-run after an outcome that could not be recorded (documented)"] += 1
            else:
                _violation(found, 3, "job %s slot %s: COMMAND ran and its runner exited 0 %d times (runs %s, in "
                           "that order; none but the last may, unless it logged that it could not record the outcome)"
                           % (job, slot, len(ok_runs), ", ".join(map(str, ok_runs))), job=job, slot=slot)
        if record is None:
            zero = [r["id"] for r in fired if r.get("rc") == 0]
            if not tokens and not zero:
                # Nothing ran and no runner said it did: the runners' outcomes account for the slot.
                unexplained = [r["id"] for r in fired if r.get("rc") not in (69, 70, 75) and not _killed(r)
                               and r.get("rc") is not None]
                if unexplained:
                    _violation(found, 3, "job %s slot %s: not accounted for: no run record, and runs %s ended with %s"
                               % (job, slot, unexplained, [runs_by_id[i].get("rc") for i in unexplained]),
                               job=job, slot=slot)
                counts["not run (%s)" % _outcomes(fired)] += 1
                continue
            keep = config.get("keep")
            newer = [k for k in by_slot if k[0] == job and k > (job, slot)]
            if keep and isinstance(job_records, list) and len(newer) >= keep:
                counts["pruned before any snapshot (runners only)"] += 1
                continue
            if tokens:
                _violation(found, 3, "job %s slot %s: COMMAND ran (tokens %s) but the slot has no run record" % (
                    job, slot, sorted(tokens)), job=job, slot=slot)
            if zero:
                _violation(found, 3, "job %s slot %s: runs %s exited 0 but the slot has no run record" % (
                    job, slot, zero), job=job, slot=slot)
            continue
        attempts = record.get("attempts") or []
        state = record.get("state")
        if snapshot_at is not None:
            counts["pruned (checked against its last snapshot: %s)" % state] += 1
            tokens = dict((t, h) for t, h in tokens.items() if h["start"] < snapshot_at)
        else:
            counts[{"running": "died (last attempt unmarked)"}.get(state, state)] += 1
        counts["attempts died"] += sum(1 for a in attempts if a.get("state") == "died")
        if len(attempts) > 1:
            counts["slots with more than one attempt"] += 1
        succeeded = [a for a in attempts if a.get("state") == "succeeded"]
        if len(succeeded) > 1:
            _violation(found, 3, "job %s slot %s: the run record has %d succeeded attempts: %s" % (
                job, slot, len(succeeded), [(a.get("token"), a.get("host"), a.get("pid")) for a in succeeded]),
                job=job, slot=slot)
        attempt_tokens = [a.get("token") for a in attempts]
        if any(b is None or a is None or b <= a for a, b in zip(attempt_tokens, attempt_tokens[1:])):
            _violation(found, 3, "job %s slot %s: the attempts' tokens do not increase: %s" % (
                job, slot, attempt_tokens), job=job, slot=slot)
        missing = sorted(t for t in tokens if t not in attempt_tokens)
        if missing:
            _violation(found, 3, "job %s slot %s: COMMAND ran with tokens %s that the run record has no attempt for "
                       "(attempts: %s)" % (job, slot, missing, attempt_tokens), job=job, slot=slot)
        if succeeded:
            after = sorted(t for t in tokens if t > succeeded[0].get("token", 0))
            if after:
                _violation(found, 3, "job %s slot %s: COMMAND ran again (tokens %s) after the attempt with token %s "
                           "had succeeded" % (job, slot, after, succeeded[0].get("token")), job=job, slot=slot)
    # Pruning deletes the oldest records (by czxid) beyond --keep: never one newer than a record it keeps.
    kept_czxids = (history["final"] or {}).get("runs_czxid") or {}
    for job, snapshots in sorted((history.get("seen") or {}).items()):
        kept = kept_czxids.get(job)
        if not kept:
            continue
        for slot, snapshot in sorted(snapshots.items()):
            if slot not in kept:
                older = sorted(s for s, czxid in kept.items() if czxid < snapshot["czxid"])
                if older:
                    _violation(found, 3, "job %s: the record of slot %s was deleted while the older records of slots "
                               "%s were kept (pruning must delete the oldest first)" % (job, slot, older),
                               job=job, slot=slot)
    # Records of slots nobody fired (a runner computed another slot than its schedule's, with a clock offset).
    for job, job_records in records.items():
        if isinstance(job_records, list):
            for record in job_records:
                if (job, record.get("slot")) not in by_slot:
                    _violation(found, 3, "job %s: a run record for slot %s, which was never fired" % (
                        job, record.get("slot")), job=job, slot=record.get("slot"))
        elif isinstance(job_records, dict) and "error" in job_records:
            _violation(found, 3, "job %s: the run records could not be read: %s" % (job, job_records["error"]),
                       job=job)
    return stats


def _module_crashed(result):
    """Whether a failed Ansible task's result says the module crashed (rather than failed with its message)."""
    exception = str(result.get("exception") or "")
    return ("Traceback" in str(result.get("module_stderr") or "") or str(result.get("msg")).startswith("MODULE FAILURE")
            or bool(exception and "traceback unavailable" not in exception))


def _killed(runner):
    return runner.get("rc") is not None and runner["rc"] < 0 and any(
        s[0] == "KILL" for s in runner.get("signals") or [])


def _outcomes(runners):
    counts = collections.Counter("killed" if _killed(r) else str(r.get("rc")) for r in runners)
    return ", ".join("%s x%d" % kv for kv in sorted(counts.items())) or "not fired"


def _check_exits(history, found):
    for runner in history["runners"]:
        rc, rid = runner.get("rc"), runner.get("id")
        where = "run %s (%s on %s%s)" % (rid, runner.get("job"), runner.get("node"),
                                         ", slot %s" % runner["slot"] if runner.get("slot") else "")
        if rc is None:
            _violation(found, 4, "%s: the runner was still running at the end" % where, run=rid)
        elif rc < 0:
            sent = [s[0] for s in runner.get("signals") or []]
            if not (rc == -signal.SIGKILL and "KILL" in sent):
                _violation(found, 5, "%s: the runner died from signal %d, which the nemesis did not send (sent: %s)"
                           % (where, -rc, sent or "none"), run=rid, rc=rc)
        elif not (rc in DOCUMENTED_EXITS or rc == runner.get("asked_exit") or 129 <= rc <= 128 + 64):
            _violation(found, 5, "%s: exit code %d is not in the documented table (COMMAND was to exit %s)" % (
                where, rc, runner.get("asked_exit")), run=rid, rc=rc)
        elif rc in NOT_CAUSED_HERE:
            _violation(found, 5, "%s: exit code %d (%s): nothing in this run should cause it" % (
                where, rc, DOCUMENTED_EXITS[rc]), run=rid, rc=rc)
        text = runner.get("stderr") or ""
        for needle in ("Traceback", "internal error"):
            if needle in text:
                at = text.index(needle)
                _violation(found, 5, "%s: %r in the runner's stderr: %s" % (where, needle, text[at:at + 300]),
                           run=rid)
    for item in history["holds"] + [f for f in history["faults"] if f.get("kind") == "force-release"]:
        for call in (item.get("acquire"), item.get("release"), item.get("call")):
            if isinstance(call, dict) and call.get("crash"):
                _violation(found, 5, "the lock module (through %s) crashed: %s" % (
                    call.get("via") or "_hold.lock_task", call["crash"][-600:]))


def _check_final(history, found):
    final = history["final"]
    if not final:
        _violation(found, 4, "the run did not get to its final checks (final.json is missing)")
        return
    for name, children in sorted((final.get("locks") or {}).items()):
        if children:
            _violation(found, 4, "lock %s: contender nodes left after the settle period: %s" % (name, children),
                       job=name)
    keeps = dict((job, cfg.get("keep")) for job, cfg in history["meta"].get("jobs", {}).items())
    for job, count in sorted((final.get("runs") or {}).items()):
        if keeps.get(job) and count > keeps[job]:
            _violation(found, 4, "job %s: %d run records, more than --keep %d" % (job, count, keeps[job]), job=job)
    for proc in final.get("leftover") or []:
        _violation(found, 4, "a process was still running after the settle period: pid %s %s" % (
            proc.get("pid"), proc.get("what")), pid=proc.get("pid"))
    for run in final.get("final_runs") or []:
        if run.get("rc") != 0 or not run.get("ticked"):
            _violation(found, 4, "job %s could not run once the faults had healed: run %s exited %s%s" % (
                run.get("job"), run.get("id"), run.get("rc"), "" if run.get("ticked") else ", its COMMAND never ran"),
                job=run.get("job"))
    for problem in final.get("problems") or []:
        _violation(found, 4, problem)


def check(history):
    """(violations, statistics) of a history (load_history): statistics has "slots" ({job: Counter}) and
    "closest" (the smallest gaps between one holder's last tick and the next holder's first)."""
    found = []
    closest = {}
    jobs = _holders(history, found)
    _check_overlaps(jobs, found, closest, dict((r.get("id"), r) for r in history["runners"]))
    _check_tokens(jobs, found)
    slots = _slot_accounting(history, jobs, found)
    _check_final(history, found)
    _check_exits(history, found)
    return found, {"slots": slots, "closest": closest, "holders": sum(len(h) for h in jobs.values())}


def summary(history, violations, stats):
    """The end-of-run report, as text."""
    meta = history["meta"]
    out = []
    out.append("=== soak summary: seed %s, %s nodes, %.0f s of faults, session timeout %s s, tickTime %s ms ===" % (
        meta.get("seed"), meta.get("nodes"), meta.get("duration", 0), meta.get("session_timeout"),
        meta.get("tick_time_ms")))
    if meta.get("elapsed"):
        out.append("wall time %.0f s (setup %.0f s, faults %.0f s, settle and checks %.0f s)" % (
            meta["elapsed"], meta.get("setup", 0), meta.get("duration", 0), meta.get("settle", 0)))
    faults = collections.Counter(f["kind"] for f in history["faults"] if f.get("applied", True))
    skipped = collections.Counter(f["kind"] for f in history["faults"] if f.get("skipped"))
    out.append("")
    out.append("faults injected (%d; %d planned ones found nothing to act on):" % (
        sum(faults.values()), sum(skipped.values())))
    details = collections.defaultdict(collections.Counter)
    for f in history["faults"]:
        if not f.get("applied", True):
            continue
        if f["kind"] == "kill-server" and "(leader)" in (f.get("target") or ""):
            details[f["kind"]]["the leader"] += 1
        elif f["kind"] == "blip-on-write":
            details[f["kind"]]["%s %s forwarding" % (f.get("request"), "after" if f.get("after_forwarding") else
                                                     "before")] += 1
        elif f["kind"] == "force-release":
            details[f["kind"]]["%s via %s" % (f.get("how"), f.get("via") or "lock_task")] += 1
        elif f["kind"] == "stderr-stuck":
            details[f["kind"]]["runners with a full pipe"] += len(f.get("pipes_full") or [])
            details[f["kind"]]["of which exited while it was full"] += len(f.get("exited_with_full_pipe") or [])
        elif f["kind"] in ("kill-runner", "kill-group", "stop-runner"):
            details[f["kind"]]["holding" if (f.get("target") or "").endswith("acquired)") else "other"] += 1
        elif f["kind"] in ("partition-node", "stop-runner", "ensemble-down", "cut-follower", "kill-server",
                           "stderr-stuck"):
            length = f["end"] - f["start"]
            details[f["kind"]]["longer than the session" if length > meta.get("session_timeout", 4) else
                               "shorter"] += 1
    for kind in list(FAULTS) + sorted(set(faults) - set(FAULTS)):
        if faults.get(kind) or skipped.get(kind):
            detail = ", ".join("%s %d" % kv for kv in sorted(details[kind].items()))
            out.append("  %-16s %4d%s%s" % (kind, faults[kind], "  (%s)" % detail if detail else "",
                                            "  [%d skipped]" % skipped[kind] if skipped[kind] else ""))
    runners = history["runners"]
    codes = collections.Counter()
    for runner in runners:
        rc = runner.get("rc")
        if rc is None:
            codes["still running"] += 1
        elif rc < 0:
            codes["killed (signal %d)" % -rc] += 1
        else:
            meaning = DOCUMENTED_EXITS.get(rc) or ("COMMAND's own" if rc == FAIL_EXIT else "128+%d" % (rc - 128)
                                                   if rc > 128 else "internal error" if rc == 1 else "?")
            codes["%d %s" % (rc, meaning)] += 1
    ran = collections.Counter(p["job"] for p in history["procs"] if p.get("role") == "main")
    out.append("")
    out.append("runs (%d runners, %d COMMANDs started) by exit code:" % (len(runners), sum(ran.values())))
    for label, count in sorted(codes.items(), key=lambda kv: (len(kv[0].split()[0]), kv[0])):
        out.append("  %-24s %5d" % (label, count))
    out.append("  (%d runs' COMMAND flooded stderr; stderr-stuck above says how many runners met a full pipe)"
               % sum(1 for r in runners if r.get("flood_lines")))
    holds = history["holds"]
    out.append("")
    for via in ("ansible-playbook", "lock_task"):
        mine = [h for h in holds if (h.get("via") or "lock_task") == via]
        out.append("playbook holds through %s: %d tried, %d taken, %d confirmed held until their release" % (
            via, len(mine), sum(1 for h in mine if h.get("token") is not None),
            sum(1 for h in mine if h.get("confirmed"))))
    out.append("")
    out.append("hand-overs: %d holders; by what ended the previous holder, how many, and the closest (the next "
               "holder's first tick minus the previous one's last tick):" % stats.get("holders", 0))
    for key, item in sorted(stats.get("closest", {}).items(), key=lambda kv: kv[1]["gap"]):
        out.append("  %-44s %4d  %+.3f s  job %s: %s, then %s" % (key, item["n"], item["gap"], item["job"],
                                                                  item["before"], item["after"]))
    out.append("")
    out.append("slots:")
    for job in sorted(stats.get("slots", {})):
        counts = stats["slots"][job]
        detail = ", ".join("%s %d" % (k, v) for k, v in sorted(counts.items()) if k != "slots" and v)
        out.append("  %-11s %4d fired: %s" % (job, counts["slots"], detail))
    out.append("")
    if violations:
        out.append("VIOLATIONS (%d):" % len(violations))
        for v in violations:
            out.append("  [check %d] %s" % (v["check"], v["message"]))
        out.append("history kept in %s" % history.get("folder"))
    else:
        out.append("violations: none")
    return "\n".join(out)


# --- docs/reliability.md: the section "Randomized faults (make soak)" --------------------------------------

DOC = os.path.join(REPO, "docs", "reliability.md")
DOC_TITLE = "## Randomized faults (make soak)"
DOC_BEGIN = "<!-- soak:begin: generated by tests/soak/soak.py after a run without violations; do not edit by hand -->"
DOC_END = "<!-- soak:end -->"


def _exit_label(rc):
    if rc is None:
        return "still running"
    if rc < 0:
        return "killed by the nemesis (signal %d)" % -rc
    meaning = DOCUMENTED_EXITS.get(rc) or ("COMMAND's own exit" if rc == FAIL_EXIT else "128+%d" % (rc - 128)
                                           if rc > 128 else "?")
    return "%d (%s)" % (rc, meaning)


def figures(history, violations, stats):
    """What a run shows, for the docs: plain counters (summed over the runs of one table)."""
    meta = history["meta"]
    faults = collections.Counter(f["kind"] for f in history["faults"] if f.get("applied", True))
    via = collections.Counter()
    for f in history["faults"]:
        if f.get("applied", True) and f["kind"] == "force-release":
            via["forced releases through %s" % (f.get("via") or "lock_task")] += 1
    for hold in history["holds"]:
        if hold.get("token") is not None:
            via["playbook holds through %s" % (hold.get("via") or "lock_task")] += 1
    slots = {}
    for job, counts in (stats.get("slots") or {}).items():
        slots[job] = dict(counts)
    return {"seed": meta.get("seed"), "duration": round(meta.get("duration", 0)), "nodes": meta.get("nodes"),
            "session_timeout": meta.get("session_timeout"), "tick_time_ms": meta.get("tick_time_ms"),
            "faults": dict(faults), "exits": dict(collections.Counter(_exit_label(r.get("rc"))
                                                                      for r in history["runners"])),
            "commands": sum(1 for p in history["procs"] if p.get("role") == "main"),
            "holders": stats.get("holders", 0), "controller": dict(via), "slots": slots,
            "violations": len(violations), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def render_docs(runs, how):
    """The generated part of the section, from the figures() of one or more runs without violations."""
    total = dict((key, collections.Counter()) for key in ("faults", "exits", "controller"))
    slots = collections.defaultdict(collections.Counter)
    for run in runs:
        for key in total:
            total[key].update(run[key])
        for job, counts in run["slots"].items():
            slots[job].update(counts)
    first = runs[0]
    lines = [DOC_BEGIN,
             "Generated by %s on %s: seed%s %s, %s s of faults%s; %d nodes, session timeout %g s, tickTime %d ms. "
             "**Violations: %d.**" % (
                 how, runs[-1]["date"], "s" if len(runs) > 1 else "", ", ".join(str(r["seed"]) for r in runs),
                 " + ".join(str(r["duration"]) for r in runs), " in all" if len(runs) > 1 else "", first["nodes"],
                 first["session_timeout"], first["tick_time_ms"], sum(r["violations"] for r in runs)),
             "",
             "| fault injected | times |", "|---|---|"]
    for kind in list(FAULTS) + sorted(set(total["faults"]) - set(FAULTS)):
        lines.append("| %s | %d |" % (kind, total["faults"].get(kind, 0)))
    lines += ["", "| runner exit | runners |", "|---|---|"]

    def exit_order(item):
        label = item[0]
        return (not label[0].isdigit(), len(label.split()[0]), label)

    for label, count in sorted(total["exits"].items(), key=exit_order):
        lines.append("| %s | %d |" % (label, count))
    lines += ["", "%d COMMANDs ran, %d lock holders in all (COMMANDs and playbook holds), %s." % (
        sum(r["commands"] for r in runs), sum(r["holders"] for r in runs),
        ", ".join("%d %s" % (v, k) for k, v in sorted(total["controller"].items())) or "no playbook holds"), "",
        "| job | slots fired | how they ended |", "|---|---|---|"]
    for job in sorted(slots):
        counts = collections.Counter()
        for key, value in slots[job].items():
            if key.startswith("not run ("):  # by the runners' outcomes: one line for them all here
                key = "not run (every runner exited 69 or 75, or was killed)"
            elif key.startswith("pruned (checked against its last snapshot: "):
                key = "%s (pruned by --keep, as last seen)" % key[len("pruned (checked against its last snapshot: "):-1]
            counts[key] += value
        detail = ", ".join("%s %d" % (k, v) for k, v in sorted(counts.items()) if k != "slots" and v)
        lines.append("| %s | %d | %s |" % (job, counts["slots"], detail))
    lines.append(DOC_END)
    return "\n".join(lines)


def write_docs(runs, how, doc=DOC):
    """Replace the generated part of the section (after runs without violations only)."""
    if not runs or any(r["violations"] for r in runs):
        return False
    with open(doc) as handle:
        text = handle.read()
    if DOC_BEGIN not in text or DOC_END not in text:
        text = text.rstrip("\n") + "\n\n%s\n\n%s\n\n%s\n%s\n" % (DOC_TITLE, DOC_INTRO, DOC_BEGIN, DOC_END)
    head, rest = text.split(DOC_BEGIN, 1)
    dummy_old, tail = rest.split(DOC_END, 1)
    with open(doc + ".tmp", "w") as handle:
        handle.write(head + render_docs(runs, how) + tail)
    os.replace(doc + ".tmp", doc)
    return True


DOC_INTRO = """`make soak SOAK_MINUTES=10 [SEED=N]` (tests/soak/soak.py; its docstring is the whole design) runs
five runner nodes against a real three-server ensemble, each node behind fault proxies of its own, with seven jobs
fired on every node at once as cron would, and a playbook controller that takes and releases job locks
(`zoolocked.cron.lock` through ansible-playbook, and the same code in a helper process). A seeded nemesis injects
the faults below, overlapping in time; every COMMAND stamps its token and the time every 25 ms. A checker then reads
the whole history: no two holders of a job at overlapping times, tokens that only grow, every slot run at most once
and accounted for, nothing left running or locked once the faults healed, only documented exit codes and no
tracebacks. The table is written only after a run without violations; `tests/soak/test_soak.py` runs two seeds for a
minute each in `make test` (and writes the table with ZOO_LOCKED_WRITE_DOCS=1)."""


# --- nodes --------------------------------------------------------------------------------------------


class Node:
    """One node of the cluster: a name, its proxies, its environment, the reader of its runners' stderr."""

    def __init__(self, index, ensemble):
        self.index = index
        self.name = "n%d" % (index + 1)
        # tests/tcpproxy.py: freezable (bytes stay in the kernel's buffers, connections accepted meanwhile are held),
        # droppable, and a request trigger shared by the node's three proxies (its Nth write to any server).
        self.proxies = [RequestProxy(ensemble[sid].port) for sid in sorted(ensemble.peers)]
        self.trigger = None
        self.hosts = ",".join(p.hosts for p in self.proxies)
        self.reading = threading.Event()  # set: the harness reads this node's runners' stderr
        self.reading.set()
        self.clock_offset = 0.0
        self.lock = threading.Lock()
        self.frozen = 0
        self.stuck = 0
        self.offsets = 0

    def freeze(self):
        with self.lock:
            self.frozen += 1
            for p in self.proxies:
                p.freeze()

    def thaw(self):
        with self.lock:
            self.frozen = max(0, self.frozen - 1)
            if not self.frozen:
                for p in self.proxies:
                    p.thaw()

    def drop(self):
        return sum(p.drop_connections() for p in self.proxies)

    def set_trigger(self, trigger):
        """Break this node's connection to any server at a request (a tcpproxy.Trigger; None: let all pass)."""
        self.trigger = trigger
        for p in self.proxies:
            p.trigger = trigger

    def close(self):
        for p in self.proxies:
            p.close()


# --- runners --------------------------------------------------------------------------------------------


def _close_quietly(client):
    """Stop and close a harness kazoo client; errors do not matter at that point."""
    try:
        client.stop()
        client.close()
    except Exception:  # noqa: BLE001
        pass


class RunnerProc:
    """One `zoo-locked run` on a node, its stderr read by the harness (unless the node's reader is stuck)."""

    STDERR_CAP = 32768

    def __init__(self, rid, node, job, slot, args, env, asked_exit, final=False):
        self.id = rid
        self.node = node
        self.job = job
        self.slot = slot
        self.asked_exit = asked_exit
        self.final = final
        self.args = args
        self.lock = threading.Lock()
        self.signals = []
        self.stderr = bytearray()
        self.stderr_dropped = 0
        self.flood_lines = 0
        self.partial = b""
        self.events = []
        self.state = "started"
        self.rc = None
        self.end = None
        self.start = time.time()
        self.clock_offset = 0.0
        self.popen = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.PIPE, env=env, start_new_session=True)
        self.pid = self.popen.pid
        self.fd = self.popen.stderr.fileno()
        os.set_blocking(self.fd, False)

    def signal(self, signum, group=False):
        """Send signum to the runner (or its process group) if it has not exited; True when sent."""
        with self.lock:
            if self.rc is not None:
                return False
            rc = self.popen.poll()
            if rc is not None:
                self._exited(rc)
                return False
            try:
                if group:
                    os.killpg(self.pid, signum)
                else:
                    os.kill(self.pid, signum)
            except OSError:
                return False
            self.signals.append([signal.Signals(signum).name[3:], time.time(), group])
            return True

    def _exited(self, rc):
        self.rc = rc
        self.end = time.time()

    def poll(self):
        with self.lock:
            if self.rc is None:
                rc = self.popen.poll()
                if rc is not None:
                    self._exited(rc)
            return self.rc

    def read(self):
        """Read what is in the pipe; False at EOF (the pipe is closed then)."""
        try:
            data = os.read(self.fd, 65536)
        except BlockingIOError:
            return True
        except OSError:
            data = b""
        if not data:
            self.close_pipe()
            return False
        self._feed(data)
        return True

    def close_pipe(self):
        if self.fd is not None:
            if self.partial:
                self._line(self.partial)
                self.partial = b""
            self.popen.stderr.close()
            self.fd = None

    def _feed(self, data):
        lines = (self.partial + data).split(b"\n")
        self.partial = lines.pop()
        if len(self.partial) > 65536:
            self.partial = self.partial[-65536:]
        for line in lines:
            self._line(line)

    def _line(self, line):
        if line.startswith(b"soak-flood "):
            self.flood_lines += 1
            return
        if len(self.stderr) + len(line) < self.STDERR_CAP:
            self.stderr += line + b"\n"
        else:
            self.stderr_dropped += 1
        if line.startswith(b"zoo-locked: "):
            event = line[12:].split(b" ", 1)[0].decode("ascii", "replace")
            self.events.append(event)
            if event in ("acquired", "waiting", "released", "lost", "stopping", "skipped", "done", "error"):
                self.state = event

    @property
    def finished(self):
        return self.rc is not None and self.fd is None

    def record(self):
        return {"id": self.id, "node": self.node.name, "job": self.job, "slot": self.slot, "pid": self.pid,
                "start": self.start, "end": self.end, "rc": self.rc, "asked_exit": self.asked_exit,
                "signals": self.signals, "final": self.final, "events": self.events,
                "stderr": self.stderr.decode("utf-8", "replace"), "stderr_lines_dropped": self.stderr_dropped,
                "flood_lines": self.flood_lines, "pipe_open": self.fd is not None, "args": self.args[1:],
                "clock_offset": round(self.clock_offset, 3)}


# --- the run --------------------------------------------------------------------------------------------


def _pipe_full(pid):
    """Whether a runner's stderr pipe is full: a non-blocking write of a filler line (which the reader drops) fails.
    Through a description of our own (/proc/PID/fd/2 opened again), as the runner writes its log lines."""
    try:
        fd = os.open("/proc/%d/fd/2" % pid, os.O_WRONLY | os.O_NONBLOCK)
    except OSError:
        return False
    try:
        os.write(fd, b"soak-flood probe " + b"p" * 82 + b"\n")  # 100 bytes: shorter than any runner log line
        return False
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def _cmdline(pid):
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as handle:
            return handle.read().replace(b"\0", b" ").decode("utf-8", "replace").strip()
    except OSError:
        return ""


def _comm(pid):
    try:
        with open("/proc/%d/comm" % pid) as handle:
            return handle.read().strip()
    except OSError:
        return ""


class Skip(Exception):
    """A fault found nothing to act on."""


def _settled(record, config):
    """Whether a run record can change no more."""
    state = record.get("state")
    return state in ("succeeded", "missed") or (state in ("failed", "stopped") and not config.get("retry_failed"))


class Soak:
    def __init__(self, options):
        from zkensemble import ZKEnsemble

        self.options = options
        self.seed = options.seed
        self.duration = options.duration
        self.T = options.session_timeout
        self.folder = options.folder
        os.makedirs(os.path.join(self.folder, "ticks"))
        self.ticks = os.path.join(self.folder, "ticks")
        self.ticker = os.path.join(self.folder, "ticker.py")
        with open(self.ticker, "w") as handle:
            handle.write(TICKER_SOURCE)
        self.config = os.path.join(self.folder, "zoo-locked.conf")  # never the machine's /etc/zoo-locked
        with open(self.config, "w") as handle:
            handle.write("[zoo-locked]\n")
        self.root = "/soak-%d-%s" % (self.seed, uuid.uuid4().hex[:6])
        self.mark = "soak-%s" % uuid.uuid4().hex
        self.plan_rng = random.Random(self.seed)
        self.rng = random.Random(self.seed * 7919 + 1)  # targets, at run time
        self.job_rng = random.Random(self.seed * 104729 + 2)  # what each fire's COMMAND does
        self.playbook_rng = random.Random(self.seed * 1299709 + 3)
        self.lock = threading.Lock()
        self.write_lock = threading.Lock()
        self.stop = threading.Event()
        self.runners = []
        self.open_runners = []  # not finished yet (the monitor's list)
        self.next_id = 0
        self.fired_skipped = 0
        self.fault_threads = []
        self.playbook_job = None  # the job whose lock the playbook holds now
        self.ansible_runs = 0
        self.ansible_holds = 0  # holds taken through ansible-playbook
        self.ansible_forced = 0  # forced releases through ansible-playbook that found a lock to revoke or break
        self.callbacks = os.path.join(self.folder, "callbacks")
        os.makedirs(self.callbacks)
        with open(os.path.join(self.callbacks, "soak_times.py"), "w") as handle:
            handle.write(CALLBACK_SOURCE)
        # ANSIBLE_COLLECTIONS_PATH in which zoolocked.cron is this checkout (a link of the run's own: a fresh clone
        # has no .cache/collections before `make test-molecule`).
        self.collections = os.path.join(self.folder, "collections")
        os.makedirs(os.path.join(self.collections, "ansible_collections", "zoolocked"))
        os.symlink(REPO, os.path.join(self.collections, "ansible_collections", "zoolocked", "cron"))
        self.inventory = os.path.join(self.folder, "inventory")
        with open(self.inventory, "w") as handle:
            handle.write("localhost ansible_connection=local ansible_python_interpreter=%s\n" % ANSIBLE_PYTHON)
        self.ens_lock = threading.Lock()
        self.cut = collections.Counter()
        self.down = set()
        self.monitor_done = threading.Event()
        self.ensemble = ZKEnsemble(os.path.join(self.folder, "zk"), size=3, tick_time=TICK_TIME_MS, init_limit=10,
                                   sync_limit=10, proxied={1, 2, 3})
        self.nodes = []
        self.seen = {}  # {job: {slot: {"at", "czxid", "record"}}}: the recorder's snapshots

    # --- bookkeeping

    def log(self, text):
        sys.stdout.write("[%6.1fs] %s\n" % (time.monotonic() - self.t_start, text))
        sys.stdout.flush()

    def append(self, name, item):
        with self.write_lock:
            with open(os.path.join(self.folder, name), "a") as handle:
                handle.write(json.dumps(item, sort_keys=True) + "\n")

    def fault(self, kind, target, start, end=None, **detail):
        self.append("faults.jsonl", dict(kind=kind, target=target, start=start, end=end or time.time(), **detail))

    def skipped(self, kind, why):
        """A planned fault that found nothing to act on (it is tried again a few seconds later, twice at most)."""
        raise Skip(why)

    # --- runners

    def env_for(self, node, job, slot, rid):
        env = {k: v for k, v in os.environ.items() if not k.startswith("ZOO_LOCKED_")}
        env.update({MARK_VAR: self.mark, "SOAK_NODE": node.name, "SOAK_JOB": job, "SOAK_SLOT": slot or "",
                    "SOAK_RUN": str(rid)})
        return env

    def start_runner(self, node, job, slot, shape, final=False):
        config = JOBS[job]
        with self.lock:
            if not final and len(self.open_runners) >= self.options.max_live:
                self.fired_skipped += 1
                return None
            rid = self.next_id
            self.next_id += 1
            code = FAIL_EXIT if self.job_rng.random() < shape.get("fail", 0.0) else 0  # a failure of this run only
        args = [ZOO_LOCKED, "run", job, "--hosts", node.hosts, "--root", self.root, "--config", self.config,
                "--session-timeout", "%g" % self.T, "--connect-timeout", "%g" % CONNECT_TIMEOUT]
        wait = self.T + 10 if final else shape["wait"]
        if wait:
            args += ["--wait", "%g" % wait]
        if config.get("timeout"):
            args += ["--timeout", "%g" % config["timeout"]]
        if config.get("kill_after") is not None:
            args += ["--kill-after", "%g" % config["kill_after"]]
        if slot is not None:
            if config.get("schedule") and not final:
                args += ["--schedule", config["schedule"]]
            else:
                args += ["--slot", slot]
            args += ["--keep", str(config.get("keep", 100))]
            if config.get("retry_failed"):
                args.append("--retry-failed")
            if config.get("max_delay") and not final:
                args += ["--max-delay", "%g" % config["max_delay"]]
        env = self.env_for(node, job, slot, rid)
        offset = node.clock_offset
        if offset:  # the runner's clock is off for real; the ticker drops the preload: its stamps are compared
            env.update(skewed_env(offset))
        command = (REAL_CLOCK if offset else []) + [
            sys.executable, "-I", "-S", self.ticker, "--dir", self.ticks, "--for", "%.3f" % shape["dur"],
            "--exit", str(code)]
        if shape.get("ignore_term"):
            command.append("--ignore-term")
        if shape.get("child"):
            command += ["--child", "%.3f" % shape["child"]]
        if config.get("daemon"):
            command.append("--daemon")
        if config.get("flood"):
            command.append("--flood")
        args += ["--"] + command
        runner = RunnerProc(rid, node, job, slot, args, env, code, final)
        runner.clock_offset = offset
        with self.lock:
            self.runners.append(runner)
            self.open_runners.append(runner)
        return runner

    def shape(self, job, rng):
        """What one fire of a job does (the same on every node: one crontab line, one program)."""
        config = JOBS[job]
        dur = rng.uniform(*config["dur"])
        return {
            "dur": dur,
            "wait": rng.choice(config["waits"]),
            "fail": config.get("fail", 0.0),
            "ignore_term": rng.random() < config.get("ignore_term", 0.0),
            "child": dur + rng.uniform(0.5, 3.0) if rng.random() < config.get("child", 0.0) else None,
        }

    def _monitor(self):
        """Reads the runners' stderr (not a stuck node's), reaps them, writes each one's record once finished."""
        while True:
            with self.lock:
                runners = list(self.open_runners)
            fds = dict((r.fd, r) for r in runners if r.fd is not None and r.node.reading.is_set())
            if fds:
                try:
                    ready = select.select(list(fds), [], [], 0.05)[0]
                except (OSError, ValueError):
                    ready = []
                for fd in ready:
                    fds[fd].read()
            else:
                time.sleep(0.05)
            finished = []
            for runner in runners:
                runner.poll()
                if runner.finished:
                    finished.append(runner)
            for runner in finished:
                self.append("runners.jsonl", runner.record())
                with self.lock:
                    self.open_runners.remove(runner)
            if self.monitor_done.is_set():
                return

    def live_runners(self, holding=None):
        with self.lock:
            runners = [r for r in self.open_runners if r.rc is None and not r.final]
        for r in runners:
            r.poll()
        runners = [r for r in runners if r.rc is None]
        if holding is not None:
            runners = [r for r in runners if (r.state == "acquired") == holding]
        return runners

    # --- the scheduler ("cron" on every node)

    def _scheduler(self):
        heap = []  # (monotonic time, seq, job, node index or None, slot, shape)
        seq = 0
        start = time.monotonic()
        for job, config in JOBS.items():
            if config.get("schedule"):
                continue
            heap.append((start + self.job_rng.uniform(0.5, config["period"]), seq, job, None, None, None))
            seq += 1
        counters = collections.Counter()
        next_minute = (int(time.time()) // 60 + 1) * 60
        while not self.stop.is_set():
            heap.sort()
            now = time.monotonic()
            wall = time.time()
            if wall >= next_minute:  # the minutely job: its slot is the minute all nodes fire for
                slot = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(next_minute))
                shape = self.shape("minutely", self.job_rng)
                for node in self.nodes:
                    heap.append((now + self.job_rng.uniform(0.0, 2.0), seq, "minutely", node.index, slot, shape))
                    seq += 1
                next_minute += 60
                continue
            if heap and heap[0][0] <= now:
                when, dummy, job, index, slot, shape = heap.pop(0)
                if index is None:  # a fire: every node, a few hundred ms apart at most
                    config = JOBS[job]
                    shape = self.shape(job, self.job_rng)
                    if config.get("slotted"):
                        counters[job] += 1
                        slot = "s%06d" % counters[job]
                    for node in self.nodes:
                        heap.append((now + self.job_rng.uniform(0.0, 0.3), seq, job, node.index, slot, shape))
                        seq += 1
                    heap.append((now + config["period"] * self.job_rng.uniform(0.8, 1.2), seq, job, None, None, None))
                    seq += 1
                else:
                    self.start_runner(self.nodes[index], job, slot, shape)
                continue
            delay = min([heap[0][0] - now] if heap else [0.5])
            self.stop.wait(max(0.0, min(delay, next_minute - wall, 0.5)))

    # --- run records, as they were during the run

    def _recorder(self):
        """Snapshots of the run records (with their czxid) every 2 s: pruning (--keep) deletes old records before the
        end, and the checker still checks what they said. Each snapshot is read after a sync (the leader's view)."""
        import logging

        from kazoo.client import KazooClient

        logging.getLogger("kazoo").setLevel(logging.CRITICAL)  # its reconnects, as the faults come and go

        client = KazooClient(hosts=self.ensemble.hosts(), timeout=10)
        client.start_async()
        try:
            while not self.stop.wait(2.0):
                if client.connected:
                    try:
                        self._snapshot(client)
                    except Exception:  # noqa: BLE001 - ZooKeeper down or moving: next time
                        pass
        finally:
            _close_quietly(client)

    def _snapshot(self, client):
        from kazoo.exceptions import NoNodeError

        for job, config in JOBS.items():
            if not config.get("slotted"):
                continue
            base = "%s/runs/%s" % (self.root, job)
            at = time.time()
            try:
                client.sync_async(base).get(timeout=5)
                children = client.get_children_async(base).get(timeout=5)
            except NoNodeError:
                continue
            seen = self.seen.setdefault(job, {})
            for slot in children:
                before = seen.get(slot)
                if before is not None and _settled(before["record"], config):
                    continue
                try:
                    data, stat = client.get_async(base + "/" + slot).get(timeout=5)
                except NoNodeError:
                    continue
                try:
                    record = json.loads(data.decode("utf-8"))
                except ValueError:
                    record = {"state": "unreadable", "attempts": []}
                seen[slot] = {"at": at, "czxid": stat.czxid, "record": record}

    # --- the lock module's code

    def lock_task(self, params, timeout=90):
        params = dict(params, hosts=self.ensemble.hosts(), root=self.root, session_timeout=self.T,
                      connect_timeout=CONNECT_TIMEOUT, config=self.config)
        env = {k: v for k, v in os.environ.items() if not k.startswith("ZOO_LOCKED_")}
        env[MARK_VAR] = self.mark
        env["ZOO_LOCKED_HOLD_LOG"] = os.path.join(self.folder, "holders.log")
        try:
            done = subprocess.run([sys.executable, "-c", LOCK_TASK_SOURCE, LIB, json.dumps(params)], env=env,
                                  stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout,
                                  start_new_session=True, check=False)
        except subprocess.TimeoutExpired:
            return {"crash": "lock_task(%s) did not return within %d s" % (params, timeout)}
        try:
            return json.loads(done.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            return {"crash": "lock_task(%s): exit %s, stdout %r, stderr %s" % (
                params, done.returncode, done.stdout[-300:], done.stderr[-1500:])}

    def ansible_playbook(self, tasks, timeout=90):
        """Run ``tasks`` (one play on localhost) with ansible-playbook: {task name: call}, each call as lock_task()
        gives it: t0 (the task started), t1 (its result came back) and result, error or crash."""
        with self.lock:
            self.ansible_runs += 1
            base = os.path.join(self.folder, "ansible", "%03d" % self.ansible_runs)
        os.makedirs(base)
        playbook, events = os.path.join(base, "playbook.yml"), os.path.join(base, "tasks.jsonl")
        with open(playbook, "w") as handle:  # JSON is YAML
            json.dump([{"name": "soak controller", "hosts": "localhost", "gather_facts": False, "tasks": tasks}],
                      handle, indent=1)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ZOO_LOCKED_", "ANSIBLE_"))}
        env.update({MARK_VAR: self.mark, "ZOO_LOCKED_HOLD_LOG": os.path.join(self.folder, "holders.log"),
                    "SOAK_TASK_LOG": events, "ANSIBLE_COLLECTIONS_PATH": self.collections,
                    "ANSIBLE_CALLBACK_PLUGINS": self.callbacks, "ANSIBLE_CALLBACKS_ENABLED": "soak_times",
                    "ANSIBLE_LOCAL_TEMP": os.path.join(base, "tmp"), "ANSIBLE_REMOTE_TEMP": os.path.join(base, "tmp"),
                    "ANSIBLE_NOCOLOR": "1", "ANSIBLE_RETRY_FILES_ENABLED": "0",
                    "ANSIBLE_DEPRECATION_WARNINGS": "0"})
        with open(os.path.join(base, "output.log"), "w") as out:
            proc = subprocess.Popen([ANSIBLE_PLAYBOOK, "-i", self.inventory, playbook], stdin=subprocess.DEVNULL,
                                    stdout=out, stderr=subprocess.STDOUT, env=env, cwd=base, start_new_session=True)
            try:
                rc = proc.wait(timeout)
            except subprocess.TimeoutExpired:
                rc = None
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except OSError:
                    pass
                proc.wait()
        calls = {}
        for event in _read_jsonl(events):
            call = calls.setdefault(event["task"], {"via": "ansible-playbook"})
            if event["event"] == "start":
                call["t0"] = event["t"]
            elif event["event"] == "skipped":
                call["skipped"] = True
            else:
                call["t1"] = event["t"]
                result = event.get("result") or {}
                if event["event"] == "ok":
                    call["result"] = result
                elif _module_crashed(result):
                    call["crash"] = str(result.get("module_stderr") or result.get("exception") or result)
                else:
                    call["error"] = str(result.get("msg") or result)
        for task in tasks:
            call = calls.setdefault(task["name"], {"via": "ansible-playbook"})
            if not call.get("skipped") and not any(k in call for k in ("result", "error", "crash")):
                with open(os.path.join(base, "output.log")) as handle:
                    output = handle.read()
                call["crash"] = "ansible-playbook %s (%s) before task %r returned: %s" % (
                    "timed out" if rc is None else "exited %s" % rc, base, task["name"], output[-1500:])
        return calls

    def lock_params(self):
        """The connection options of the lock module, as a playbook task gives them."""
        return {"hosts": self.ensemble.hosts(), "root": self.root, "session_timeout": self.T,
                "connect_timeout": CONNECT_TIMEOUT, "config": self.config}

    def _playbook(self):
        """The playbook "controller": takes a job's lock for a while (state=acquired), then releases it; the first
        time and then about one in three through a real ansible-playbook run (zoolocked.cron.lock)."""
        rng = self.playbook_rng
        while not self.stop.wait(rng.uniform(5.0, 12.0)):
            job = rng.choice(PLAYBOOK_JOBS)
            hold_for = rng.uniform(1.0, 4.0)
            wait = rng.choice([0, 2, 4])
            via_ansible = rng.random() < ANSIBLE_SHARE or not self.ansible_holds  # until one was taken
            if via_ansible:
                hold = self._playbook_hold_ansible(job, wait, hold_for)
            else:
                hold = self._playbook_hold(job, wait, hold_for)
            self.append("holds.jsonl", hold)

    def _playbook_hold(self, job, wait, hold_for):
        """A hold through the lock module's code in a helper process (cheap)."""
        acquire = self.lock_task({"name": job, "state": "acquired", "wait": wait, "lease": HOLD_LEASE,
                                  "owner": PLAYBOOK_OWNER, "purpose": "soak playbook"})
        result = acquire.get("result") or {}
        hold = {"job": job, "via": "lock_task", "acquire": acquire, "token": result.get("token"),
                "start": acquire.get("t1"), "end": None, "confirmed": False}
        if result.get("token") is not None:
            self.playbook_job = job
            self.stop.wait(hold_for)
            release = self.lock_task({"name": job, "state": "released", "owner": PLAYBOOK_OWNER})
            self.playbook_job = None
            hold.update(release=release, end=release.get("t0"),
                        confirmed=(release.get("result") or {}).get("how") == "released")
        return hold

    def _playbook_hold_ansible(self, job, wait, hold_for):
        """A hold by one ansible-playbook run: acquire, pause, release. It counts from the moment the acquire task's
        result came back to the moment the release task started."""
        conn = self.lock_params()
        tasks = [
            {"name": "acquire", "zoolocked.cron.lock": dict(conn, name=job, state="acquired", wait=wait,
                                                            lease=ANSIBLE_LEASE, owner=PLAYBOOK_OWNER,
                                                            purpose="soak playbook"),
             "register": "acquired", "ignore_errors": True},
            {"name": "hold", "ansible.builtin.pause": {"seconds": max(1, int(round(hold_for)))},
             "when": "acquired is succeeded"},
            {"name": "release", "zoolocked.cron.lock": dict(conn, name=job, state="released", owner=PLAYBOOK_OWNER),
             "when": "acquired is succeeded", "ignore_errors": True},
        ]
        self.playbook_job = job  # for the whole run: a forced release aimed at it may find nothing (and says so)
        try:
            calls = self.ansible_playbook(tasks)
        finally:
            self.playbook_job = None
        acquire, release = calls["acquire"], calls["release"]
        result = acquire.get("result") or {}
        hold = {"job": job, "via": "ansible-playbook", "acquire": acquire, "token": result.get("token"),
                "start": acquire.get("t1"), "end": None, "confirmed": False}
        if result.get("token") is not None:
            self.ansible_holds += 1
            hold.update(release=release, end=release.get("t0"),
                        confirmed=(release.get("result") or {}).get("how") == "released")
        return hold

    # --- the nemesis

    def plan(self):
        """The faults, from the seed alone: [(offset s, kind, params)]."""
        rng = self.plan_rng
        kinds, weights = list(FAULTS), list(FAULTS.values())
        plan = []
        at = rng.uniform(1.0, 3.0)
        T = self.T
        first = list(kinds)  # every kind once first (in a random order), so that a short run covers the menu
        rng.shuffle(first)
        while at < self.duration - 1.0:
            kind = first.pop() if first else rng.choices(kinds, weights)[0]
            params = {"node": rng.randrange(len(self.nodes))}
            if kind == "stop-runner":
                params["for"] = T + rng.uniform(0.5, 4.0)
            elif kind == "partition-node":
                params["for"] = rng.choice([rng.uniform(0.5, 1.5), rng.uniform(2.0, 3.5), T + rng.uniform(0.5, 6.0)])
            elif kind == "cut-follower":
                params["for"] = rng.uniform(2.0, 10.0)
            elif kind == "kill-server":
                params["for"] = rng.uniform(1.0, 8.0)
                params["leader"] = rng.random() < 0.5
            elif kind == "ensemble-down":
                params["for"] = T + rng.uniform(1.0, 4.0)
            elif kind == "blip-on-write":
                params["opcodes"] = rng.choice([[14], [14], [15, 1], [2]])
                params["nth"] = rng.randint(1, 3)
                params["after"] = rng.random() < 0.5
                params["window"] = 15.0
            elif kind == "stderr-stuck":
                params["for"] = rng.uniform(3.0, 15.0)
            elif kind == "clock-offset":
                params["offset"] = rng.choice([-1, 1]) * rng.uniform(5.0, 25.0)
                params["for"] = rng.uniform(20.0, 60.0)
            plan.append((round(at, 3), kind, params))
            at += rng.expovariate(1.0 / MEAN_FAULT_GAP)
        # Forced releases go through ansible-playbook until one found a lock: a run of a minute or more plans three
        # at least (drawn after the rest, so that the plan of a seed stays what it was).
        extra = 3 - sum(1 for item in plan if item[1] == "force-release")
        if self.duration >= 60 and extra > 0:
            for dummy in range(extra):
                plan.append((round(rng.uniform(5.0, self.duration - 10.0), 3), "force-release",
                             {"node": rng.randrange(len(self.nodes))}))
            plan.sort(key=lambda item: item[0])
        return plan

    def _nemesis(self, plan):
        start = time.monotonic()
        for at, kind, params in plan:
            if self.stop.wait(max(0.0, start + at - time.monotonic())):
                return
            thread = threading.Thread(target=self._inject, args=(kind, params), name="fault-" + kind, daemon=True)
            self.fault_threads.append(thread)
            thread.start()

    def _inject(self, kind, params):
        try:
            for attempt in range(3):
                try:
                    getattr(self, "_fault_" + kind.replace("-", "_"))(params)
                    return
                except Skip as skip:
                    if attempt == 2 or self.stop.wait(3.0):
                        now = time.time()
                        self.append("faults.jsonl", dict(kind=kind, target=None, start=now, end=now, applied=False,
                                                         skipped=str(skip)))
                        return
        except Exception:  # a harness error: recorded, and the run fails on it
            self.append("faults.jsonl", {"kind": kind, "target": None, "start": time.time(), "end": time.time(),
                                         "applied": False, "harness_error": traceback.format_exc()})

    def _pick_runner(self):
        holding = self.live_runners(holding=True)
        if holding and self.rng.random() < 0.8:
            return self.rng.choice(holding)
        runners = self.live_runners()
        return self.rng.choice(runners) if runners else None

    def _target(self, runner):
        return "run %d (%s on %s%s, %s)" % (runner.id, runner.job, runner.node.name,
                                            ", slot %s" % runner.slot if runner.slot else "", runner.state)

    def _fault_kill_runner(self, params, group=False):
        kind = "kill-group" if group else "kill-runner"
        runner = self._pick_runner()
        if runner is None:
            return self.skipped(kind, "no runner")
        target = self._target(runner)
        at = time.time()
        if runner.signal(signal.SIGKILL, group=group):
            self.fault(kind, target, at)
        else:
            self.skipped(kind, "the runner had exited")

    def _fault_kill_group(self, params):
        self._fault_kill_runner(params, group=True)

    def _fault_stop_runner(self, params):
        runner = self._pick_runner()
        if runner is None:
            return self.skipped("stop-runner", "no runner")
        target = self._target(runner)
        at = time.time()
        if not runner.signal(signal.SIGSTOP):
            return self.skipped("stop-runner", "the runner had exited")
        try:
            self.stop.wait(params["for"])
        finally:
            runner.signal(signal.SIGCONT)
        self.fault("stop-runner", target, at, stopped_for=round(time.time() - at, 3))

    def _fault_partition_node(self, params):
        node = self.nodes[params["node"]]
        holding = [r.node for r in self.live_runners(holding=True)]
        if holding and self.rng.random() < 0.7:  # where a lock is held: the interesting case
            node = self.rng.choice(holding)
        at = time.time()
        node.freeze()
        try:
            self.stop.wait(params["for"])
        finally:
            node.thaw()
        self.fault("partition-node", node.name, at)

    def _fault_cut_follower(self, params):
        with self.ens_lock:
            followers = [sid for sid in sorted(self.ensemble.peers)
                         if sid not in self.down and self.ensemble[sid].mode() == "follower"]
            if not followers:
                return self.skipped("cut-follower", "no follower")
            sid = self.rng.choice(followers)
            self.cut[sid] += 1
            self.ensemble.cut_off(sid)
        at = time.time()
        try:
            self.stop.wait(params["for"])
        finally:
            with self.ens_lock:
                self.cut[sid] -= 1
                if not self.cut[sid]:
                    self.ensemble.heal(sid)
        self.fault("cut-follower", "server %d" % sid, at)

    def _servers_down(self, pick, seconds, relaunch_all=False):
        """Kill the servers ``pick(running)`` names (under the ensemble lock), keep them down ``seconds``, launch
        them again (with ``relaunch_all``, every server then down); (sids, start), or (None, None) when pick says None."""
        with self.ens_lock:
            sids = pick([sid for sid in sorted(self.ensemble.peers) if sid not in self.down])
            if sids is None:
                return None, None
            for sid in sids:
                self.down.add(sid)
                self.ensemble[sid].kill()
        at = time.time()
        try:
            self.stop.wait(seconds)
        finally:
            with self.ens_lock:
                for sid in sorted(self.ensemble.peers) if relaunch_all else sids:
                    if sid in self.down:
                        self.down.discard(sid)
                        self.ensemble[sid].launch()
        return sids, at

    def _fault_kill_server(self, params):
        leader = []

        def pick(running):
            if running:
                leader.append(self.ensemble.leader() if params.get("leader") else None)
                return [leader[0] if leader[0] in running else self.rng.choice(running)]
            return None

        sids, at = self._servers_down(pick, params["for"])
        if sids is None:
            return self.skipped("kill-server", "every server was down")
        self.fault("kill-server", "server %d%s" % (sids[0], " (leader)" if sids[0] == leader[0] else ""), at)
        return None

    def _fault_ensemble_down(self, params):
        killed, at = self._servers_down(list, params["for"], relaunch_all=True)
        self.fault("ensemble-down", "servers %s" % killed, at)

    def _fault_blip(self, params):
        node = self.nodes[params["node"]]
        at = time.time()
        dropped = node.drop()
        self.fault("blip", node.name, at, connections=dropped)

    def _fault_blip_on_write(self, params):
        node = self.nodes[params["node"]]
        if node.trigger is not None:
            return self.skipped("blip-on-write", "%s was armed already" % node.name)
        arm = Trigger(params["opcodes"], params["nth"], "after" if params["after"] else "before")
        node.set_trigger(arm)
        at = time.time()
        deadline = time.monotonic() + params["window"]
        while arm.fired is None and time.monotonic() < deadline and not self.stop.wait(0.05):
            pass
        node.set_trigger(None)
        if arm.fired is not None:
            self.fault("blip-on-write", node.name, arm.fired, armed=at, request=OPCODES.get(arm.opcode, arm.opcode),
                       nth=arm.nth, after_forwarding=arm.when == "after")
        else:
            self.skipped("blip-on-write", "%s sent no %s within %gs" % (
                node.name, "/".join(OPCODES[o] for o in arm.opcodes), params["window"]))

    def _fault_stderr_stuck(self, params):
        node = self.nodes[params["node"]]
        flooding = [r.node for r in self.live_runners(holding=True) if JOBS[r.job].get("flood")]
        if flooding and self.rng.random() < 0.8:  # the node whose COMMAND writes to stderr: its pipe fills
            node = flooding[0]
        with node.lock:
            node.stuck += 1
            node.reading.clear()
        at = time.time()
        full = {}  # the node's runners found with a full stderr pipe
        try:
            end = time.monotonic() + params["for"]
            while time.monotonic() < end and not self.stop.is_set():
                for runner in self.live_runners():
                    if runner.node is node and runner.id not in full and _pipe_full(runner.pid):
                        full[runner.id] = runner
                self.stop.wait(min(0.25, max(0.0, end - time.monotonic())))
            # Runners that got to their end with the pipe full: logging never held them up.
            exited = sorted(rid for rid, runner in full.items() if runner.poll() is not None)
        finally:
            with node.lock:
                node.stuck -= 1
                if not node.stuck:
                    node.reading.set()
        self.fault("stderr-stuck", node.name, at, pipes_full=sorted(full), exited_with_full_pipe=exited)

    def _fault_clock_offset(self, params):
        node = self.nodes[params["node"]]
        with node.lock:
            if node.offsets:
                return self.skipped("clock-offset", "%s had an offset already" % node.name)
            node.offsets += 1
            node.clock_offset = params["offset"]
        at = time.time()
        try:
            self.stop.wait(params["for"])
        finally:
            with node.lock:
                node.offsets -= 1
                node.clock_offset = 0.0
        self.fault("clock-offset", node.name, at, offset=round(params["offset"], 3))

    def _fault_force_release(self, params):
        held = sorted({r.job for r in self.live_runners(holding=True)})
        if self.playbook_job:
            held.append(self.playbook_job)
        job = self.rng.choice(held) if held and self.rng.random() < 0.85 else self.rng.choice(list(JOBS))
        at = time.time()
        params = {"name": job, "state": "released", "force": True, "owner": NEMESIS_OWNER}
        # Through ansible-playbook until one such forced release found a lock, then about one in three.
        if not self.ansible_forced or self.rng.random() < ANSIBLE_SHARE:
            call = self.ansible_playbook([{"name": "force", "zoolocked.cron.lock": dict(self.lock_params(), **params),
                                           "ignore_errors": True}])["force"]
        else:
            call = dict(self.lock_task(params), via="lock_task")
        result = call.get("result") or {}
        how = result.get("how")
        if how not in ("revoked", "broken") and not call.get("crash"):
            self.skipped("force-release", call.get("error") or "lock %s: nothing held (%s)" % (job, how))
        if call["via"] == "ansible-playbook":
            self.ansible_forced += 1
        self.fault("force-release", "lock %s" % job, at, how=how, waited=result.get("waited"),
                   holder=(result.get("holder") or {}).get("owner"), error=call.get("error"), call=call,
                   via=call["via"])

    # --- the whole run

    def run(self):
        self.t_start = time.monotonic()
        wall_start = time.time()
        print("soak: seed %d (repeat with SEED=%d), %d nodes, %.0f s of faults, session timeout %g s" % (
            self.seed, self.seed, self.options.nodes, self.duration, self.T))
        print("soak: history in %s" % self.folder)
        sys.stdout.flush()
        meta = {"seed": self.seed, "nodes": self.options.nodes, "duration": self.duration,
                "session_timeout": self.T, "tick_time_ms": TICK_TIME_MS, "root": self.root, "mark": self.mark,
                "jobs": JOBS, "started": wall_start}
        monitor = threading.Thread(target=self._monitor, name="monitor", daemon=True)
        threads = []
        try:
            self.ensemble.start(timeout=90)
            self.nodes = [Node(i, self.ensemble) for i in range(self.options.nodes)]
            plan = self.plan()
            with open(os.path.join(self.folder, "plan.json"), "w") as handle:
                json.dump(plan, handle, indent=1)
            meta["setup"] = time.monotonic() - self.t_start
            self.log("ensemble up %s; %d faults planned" % (self.ensemble.modes(), len(plan)))
            monitor.start()
            t_faults = time.monotonic()
            for target, args in ((self._scheduler, ()), (self._playbook, ()), (self._nemesis, (plan,)),
                                 (self._recorder, ())):
                thread = threading.Thread(target=target, args=args, name=target.__name__, daemon=True)
                threads.append(thread)
                thread.start()
            while time.monotonic() < t_faults + self.duration:
                time.sleep(min(15.0, max(0.0, t_faults + self.duration - time.monotonic())))
                self.progress()
            self.stop.set()
            t_settle = time.monotonic()
            meta["duration"] = t_settle - t_faults
            self.settle(threads)
            meta["settle"] = time.monotonic() - t_settle
        finally:
            self.stop.set()
            try:
                self.teardown(monitor)
            finally:
                meta["elapsed"] = time.monotonic() - self.t_start
                meta["fires_skipped_too_many_runners"] = self.fired_skipped
                with open(os.path.join(self.folder, "meta.json"), "w") as handle:
                    json.dump(meta, handle, indent=1)

    def progress(self):
        codes = collections.Counter(r.rc for r in self.runners if r.rc is not None)
        faults = len(_read_jsonl(os.path.join(self.folder, "faults.jsonl")))
        self.log("runners %d (%d open), faults %d, exits %s, load %s" % (
            len(self.runners), len(self.open_runners), faults, dict(sorted(codes.items(), key=lambda kv: kv[0])),
            " ".join(open("/proc/loadavg").read().split()[:3])))

    def settle(self, threads):
        """Heal everything, let the runners end, then look at what is left."""
        problems = []
        final = {"problems": problems}
        for thread in threads + list(self.fault_threads):
            thread.join(60)
            if thread.is_alive():
                problems.append("harness: thread %s did not stop" % thread.name)
        for runner in self.live_runners():
            runner.signal(signal.SIGCONT)
        for node in self.nodes:
            node.set_trigger(None)
            node.clock_offset = 0.0
            node.reading.set()
            with node.lock:
                node.frozen = 0
                for p in node.proxies:
                    p.thaw()
        with self.ens_lock:
            for sid in sorted(self.ensemble.peers):
                self.ensemble.heal(sid)
                if not self.ensemble[sid].running():
                    self.ensemble[sid].launch()
            self.down.clear()
        try:
            self.ensemble.wait_serving(timeout=90)
        except Exception as exc:  # noqa: BLE001
            problems.append("harness: the ensemble did not serve again after the faults: %s" % exc)
        self.log("nemesis stopped, faults healed, ensemble %s; waiting for %d runners" % (
            self.ensemble.modes(), len(self.live_runners())))
        longest = max(max(c["waits"]) + c["dur"][1] + c.get("kill_after", 10) for c in JOBS.values())
        deadline = time.monotonic() + longest + 2 * self.T + 20
        while self.live_runners() and time.monotonic() < deadline:
            time.sleep(0.2)
        # The final runs: each job once more on a healed cluster; a stuck lock or a broken record shows here.
        shapes = dict((job, {"dur": 0.3, "wait": 0, "fail": 0.0, "ignore_term": False, "child": None}) for job in JOBS)
        finals = [self.start_runner(self.nodes[0], job, "zfinal" if JOBS[job].get("slotted") else None, shapes[job],
                                    final=True) for job in JOBS]
        deadline = time.monotonic() + self.T + 30
        while any(r.poll() is None for r in finals) and time.monotonic() < deadline:
            time.sleep(0.1)
        while any(not r.finished for r in finals) and time.monotonic() < deadline + 5:
            time.sleep(0.1)
        ticked_runs = set()
        for name in os.listdir(self.ticks):
            proc = parse_tick_file(os.path.join(self.ticks, name))
            if proc is not None and proc.get("first") is not None:
                ticked_runs.add(proc.get("run"))
        final["final_runs"] = [{"job": r.job, "id": r.id, "rc": r.rc, "ticked": r.id in ticked_runs} for r in finals]
        # Nothing may be left: runners, their COMMANDs, daemons, guardians, playbook holders; contender nodes.
        from kazoo.client import KazooClient

        client = KazooClient(hosts=self.ensemble.hosts(), timeout=10)
        try:
            client.start(timeout=30)
            deadline = time.monotonic() + self.T + 5
            while True:
                locks = self._children(client, self.root + "/locks")
                held = dict((name, self._children(client, "%s/locks/%s" % (self.root, name))) for name in locks)
                if not any(held.values()) or time.monotonic() >= deadline:
                    break
                time.sleep(0.2)
            final["locks"] = held
            final["runs"] = dict((job, len(self._children(client, "%s/runs/%s" % (self.root, job))))
                                 for job in JOBS if JOBS[job].get("slotted"))
            final["runs_czxid"] = {}
            for job in final["runs"]:
                base = "%s/runs/%s" % (self.root, job)
                stats = [(slot, client.exists(base + "/" + slot)) for slot in self._children(client, base)]
                final["runs_czxid"][job] = dict((slot, stat.czxid) for slot, stat in stats if stat is not None)
        except Exception as exc:  # noqa: BLE001
            problems.append("harness: could not read the lock tree at the end: %s" % exc)
        finally:
            _close_quietly(client)
        records = {}
        for job, config in JOBS.items():
            if not config.get("slotted"):
                continue
            done = subprocess.run([ZOO_LOCKED, "history", job, "--json", "--limit", "1000", "--hosts",
                                   self.ensemble.hosts(), "--root", self.root, "--config", self.config],
                                  capture_output=True, text=True, timeout=60, env=zkharness.runner_env(), check=False)
            try:
                records[job] = json.loads(done.stdout)["runs"]
            except (ValueError, KeyError):
                records[job] = {"error": "zoo-locked history exited %s: %s" % (done.returncode, done.stderr[-500:])}
        with open(os.path.join(self.folder, "records.json"), "w") as handle:
            json.dump(records, handle, indent=1, sort_keys=True)
        with open(os.path.join(self.folder, "seen.json"), "w") as handle:
            json.dump(self.seen, handle, indent=1, sort_keys=True)
        deadline = time.monotonic() + max(HOLD_LEASE, ANSIBLE_LEASE) + 2
        while True:
            leftover = zkharness.pids_with_mark(self.mark)
            if not leftover or time.monotonic() >= deadline:
                break
            time.sleep(0.2)
        final["leftover"] = [{"pid": pid, "what": "%s: %s" % (_comm(pid), _cmdline(pid)[:200])} for pid in leftover]
        with self.lock:
            final["runners_open"] = [r.id for r in self.open_runners]
        with open(os.path.join(self.folder, "final.json"), "w") as handle:
            json.dump(final, handle, indent=1, sort_keys=True)

    @staticmethod
    def _children(client, path):
        from kazoo.exceptions import NoNodeError

        try:
            return sorted(client.get_children(path))
        except NoNodeError:
            return []

    def teardown(self, monitor):
        with self.lock:
            runners = list(self.open_runners)
        for runner in runners:
            runner.signal(signal.SIGCONT)
            runner.signal(signal.SIGKILL, group=True)
        zkharness.kill_marked(self.mark)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with self.lock:
                if not any(r.rc is None for r in self.open_runners):
                    break
            time.sleep(0.1)
        with self.lock:
            for runner in self.open_runners:
                runner.close_pipe()
        self.monitor_done.set()
        if monitor.is_alive():
            monitor.join(10)
        with self.lock:
            for runner in self.open_runners:  # still open: written as they are (rc None: "still running")
                self.append("runners.jsonl", runner.record())
            self.open_runners = []
        for node in self.nodes:
            node.close()
        self.ensemble.stop()


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    p.add_argument("--minutes", type=float, help="how long the nemesis runs (default 10)")
    p.add_argument("--seconds", type=float, help="the same, in seconds")
    p.add_argument("--seed", type=int, help="the seed of the plan and of every choice (default: random)")
    p.add_argument("--nodes", type=int, default=5)
    p.add_argument("--session-timeout", type=float, default=DEFAULT_SESSION_TIMEOUT)
    p.add_argument("--max-live", type=int, default=0, help="at most this many runners at once (default 8 x nodes)")
    p.add_argument("--out", default=os.path.join(REPO, ".cache", "soak"), help="where history folders go")
    p.add_argument("--keep-history", action="store_true", help="keep the history folder after a clean run too")
    p.add_argument("--check", metavar="FOLDER", help="only run the checker on a kept history folder")
    p.add_argument("--no-docs", action="store_true",
                   help="do not write the run's figures into docs/reliability.md (done after a run without violations)")
    p.add_argument("--figures", metavar="FILE", help="also write the run's figures (JSON) to FILE")
    options = p.parse_args(argv)
    if options.seconds is not None and options.minutes is not None:
        p.error("--minutes and --seconds exclude each other")
    options.duration = options.seconds if options.seconds is not None else 60.0 * (
        options.minutes if options.minutes is not None else 10.0)
    if options.seed is None:
        options.seed = random.SystemRandom().randrange(1, 10 ** 6)
    options.max_live = options.max_live or 8 * options.nodes
    sys.path.insert(0, LIB)
    from zoo_locked import _config

    lowest = _config.min_session_timeout(TICK_TIME_MS)
    if options.session_timeout < lowest:
        p.error("--session-timeout %g is below the safe bound %.2f s for tickTime %d ms (docs/architecture.md)"
                % (options.session_timeout, lowest, TICK_TIME_MS))
    return options


def _terminated(signum, frame):
    raise SystemExit(128 + signum)  # the run's finally blocks stop the runners and the ensemble


def main(argv=None):
    options = parse_args(sys.argv[1:] if argv is None else argv)
    signal.signal(signal.SIGTERM, _terminated)
    if options.check:
        history = load_history(options.check)
        violations, stats = check(history)
        print(summary(history, violations, stats))
        return 1 if violations else 0
    if not os.access(ZOO_LOCKED, os.X_OK):
        print("soak: %s is missing: run `make venv`" % ZOO_LOCKED)
        return 2
    options.folder = os.path.join(options.out, "%s-seed%d" % (time.strftime("%Y%m%d-%H%M%S"), options.seed))
    soak = Soak(options)
    harness_error = None
    try:
        soak.run()
    except Exception:  # noqa: BLE001 - reported, and the history kept
        harness_error = traceback.format_exc()
    history = load_history(options.folder)
    violations, stats = check(history)
    if harness_error:
        violations.append({"check": 0, "message": "harness error: %s" % harness_error})
    for fault in history["faults"]:
        if fault.get("harness_error"):
            violations.append({"check": 0, "message": "harness error in fault %s: %s" % (
                fault["kind"], fault["harness_error"][-800:])})
    print(summary(history, violations, stats))
    print("soak: seed %d: %s" % (options.seed, "FAILED, %d violation(s)" % len(violations) if violations else "ok"))
    figs = figures(history, violations, stats)
    if options.figures:
        with open(options.figures, "w") as handle:
            json.dump(figs, handle, indent=1, sort_keys=True)
    if not options.no_docs and write_docs([figs], "`make soak`"):
        print("soak: the figures are in %s, section %r" % (os.path.relpath(DOC, REPO), DOC_TITLE[3:]))
    if violations or options.keep_history:
        with open(os.path.join(options.folder, "violations.json"), "w") as handle:
            json.dump(violations, handle, indent=1)
        print("soak: history kept in %s" % options.folder)
    else:
        shutil.rmtree(options.folder, ignore_errors=True)
    return 1 if violations else 0


if __name__ == "__main__":
    sys.exit(main())
