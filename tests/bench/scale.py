"""zoo-locked at scale against a real three-server ZooKeeper ensemble (issue 13): prints Markdown sections.

    .venv/bin/python tests/bench/scale.py [--nodes 10,50,100] [--jobs 5] [--held 100,200,400] [--quick]

1. One slot fired on N "nodes" at once: every node runs `zoo-locked run JOB --slot S --wait W` for each of the
   same J jobs, all N x J runners released at the same instant (they wait on a FIFO, which is closed to fire).
   A node is a set of runner processes with their own `--owner`; there are no containers. Measured: runs per
   slot (must be exactly 1 per job), time from the fire to each runner's decision (p50, p99), ZooKeeper requests
   and transactions per slot (`mntr` and `srvr` of every server before and after), the runners' CPU time, and
   the resident memory of runners (and their guardians, counted separately) while waiting and while holding.
2. K locks held at once (K runners running `sleep`, each its own lock), for several K: the ensemble's requests/s
   (`mntr`) and CPU (the server JVMs' /proc/PID/stat) over a window, checked for linear growth and extrapolated
   to 1,000 held locks, against the target stated in the output.

Exit status 1 when a slot ran other than exactly once, or when a held-lock count could not be measured (more
than half its runners never held or lost their lock; single losses are counted and reported). `--quick` is a
small form (2 and 4 nodes, 5 and 10 held locks, 3 s windows) for the smoke test tests/bench/test_scale_quick.py.
"""

import argparse
import itertools
import json
import os
import re
import resource
import selectors
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(REPO, "tests"))
sys.path.insert(0, HERE)

from run import machine, quantile  # noqa: E402
from zkensemble import ZKEnsemble  # noqa: E402
from zkharness import four_letter, kill_marked, marked, parse_log, runner_env  # noqa: E402

RUNNER = os.path.join(REPO, ".venv", "bin", "zoo-locked")
sys.path.insert(0, REPO)
from plugins.module_utils._config import (  # noqa: E402
    HEARTBEAT_SHARE, KILL_LANDING, KILL_SHARE, TERM_SHARE, min_session_timeout,
)

CLK_TCK = os.sysconf("SC_CLK_TCK")
TICK_MS = 2000  # the zookeeper role's default tickTime (roles/zookeeper/defaults/main.yml)
# The target for the heartbeat of held locks (section 2), fixed before measuring: see held_report().
ATTEMPTS = itertools.count()
HELD_BATCH = 20  # held-lock runners started at once
TARGET_LOCKS = 1000
TARGET_REQUESTS = 2.5  # requests/s per held lock: the sync and the read of each heartbeat (2/s at T = 10 s) + pings
TARGET_CPU = 0.25  # cores of the three servers together (25 % of one core) for 1,000 held locks


# --- the ensemble's counters ----------------------------------------------------------------------------


class Probe:
    """`mntr` and `srvr` of every server, counting our own four-letter requests (each counts as a packet)."""

    KEYS = ("zk_packets_received", "zk_packets_sent", "zk_cnt_readlatency", "zk_cnt_updatelatency",
            "zk_response_bytes")

    def __init__(self, ensemble):
        self.ensemble = ensemble
        self.sent = dict((sid, 0) for sid in ensemble.peers)

    def _ask(self, sid, word):
        self.sent[sid] += 1
        return four_letter(self.ensemble[sid].port, word, timeout=5.0)

    def snapshot(self):
        snap = {}
        for sid, peer in sorted(self.ensemble.peers.items()):
            values = {}
            for line in self._ask(sid, "mntr").splitlines():
                key, dummy, value = line.partition("\t")
                if key in self.KEYS or key == "zk_server_state":
                    values[key] = value
            values["probes"] = self.sent[sid]
            zxid = re.search(r"^Zxid: (0x[0-9a-f]+)", self._ask(sid, "srvr"), re.M)
            values["zxid"] = int(zxid.group(1), 16) if zxid else None
            values["cpu"] = jvm_cpu(peer.proc.pid)
            values["when"] = time.monotonic()
            snap[sid] = values
        return snap

    @staticmethod
    def diff(before, after):
        """Per server: requests (packets received, our probes taken out), reads, writes, CPU s; and transactions."""
        out = {}
        for sid in before:
            b, a = before[sid], after[sid]
            probes = a["probes"] - b["probes"]
            out[sid] = {
                "role": a.get("zk_server_state", "?"),
                "requests": int(a["zk_packets_received"]) - int(b["zk_packets_received"]) - probes,
                "reads": int(a["zk_cnt_readlatency"]) - int(b["zk_cnt_readlatency"]),
                "writes": int(a["zk_cnt_updatelatency"]) - int(b["zk_cnt_updatelatency"]),
                "bytes": int(a.get("zk_response_bytes", 0)) - int(b.get("zk_response_bytes", 0)),
                "cpu": a["cpu"] - b["cpu"],
                "seconds": a["when"] - b["when"],
            }
        zxids = [(b["zxid"], a["zxid"]) for b, a in zip(before.values(), after.values()) if b["zxid"] and a["zxid"]]
        # Every server applies every transaction; the highest zxid is the leader's. Same epoch (high 32 bits): the
        # difference is the number of transactions.
        old, new = max(z[0] for z in zxids), max(z[1] for z in zxids)
        out["transactions"] = new - old if new >> 32 == old >> 32 else None
        return out


def jvm_cpu(pid):
    """CPU seconds (user + system) of a process so far."""
    with open("/proc/%d/stat" % pid) as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / float(CLK_TCK)


def total(diff, key):
    return sum(v[key] for k, v in diff.items() if isinstance(k, int))


# --- runners: start, clock their log lines, look at their memory --------------------------------------------


class LineClock:
    """Reads the stderr pipes of many runners in one thread and notes when each log line arrived."""

    def __init__(self):
        self.selector = selectors.DefaultSelector()
        self.lines = {}  # key -> [(monotonic, event, fields)]
        self.raw = {}  # key -> [the log lines as written]
        self.state = {}  # key -> last event
        self.partial = {}
        self.lock = threading.Lock()
        self.open = 0
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, name="line-clock")
        self.thread.daemon = True
        self.thread.start()

    def add(self, key, pipe):
        os.set_blocking(pipe.fileno(), False)
        with self.lock:
            self.lines[key] = []
            self.raw[key] = []
            self.partial[key] = b""
            self.open += 1
            self.selector.register(pipe, selectors.EVENT_READ, key)

    def _run(self):
        while not self.done.is_set():
            with self.lock:
                empty = self.open == 0
            if empty:
                time.sleep(0.01)
                continue
            for sel_key, dummy in self.selector.select(timeout=0.05):
                now = time.monotonic()
                key = sel_key.data
                try:
                    data = os.read(sel_key.fd, 1 << 16)
                except BlockingIOError:
                    continue
                if not data:
                    with self.lock:
                        self.selector.unregister(sel_key.fileobj)
                        self.open -= 1
                    sel_key.fileobj.close()
                    continue
                text = self.partial[key] + data
                *complete, self.partial[key] = text.split(b"\n")
                for line in complete:
                    text = line.decode("utf-8", "replace")
                    self.raw[key].append(text)
                    for event, fields in parse_log(text):
                        self.lines[key].append((now, event, fields))
                        self.state[key] = event

    def close(self, grace=5.0):
        """Wait (up to grace) for every pipe to close: an idle guardian fork may hold one a moment longer."""
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            with self.lock:
                if self.open == 0:
                    break
            time.sleep(0.02)
        self.done.set()
        self.thread.join(5)
        for sel_key in list(self.selector.get_map().values()):
            sel_key.fileobj.close()


def proc_status(pid):
    """(VmRSS kB, cmdline argv) of a process, or None."""
    try:
        with open("/proc/%d/status" % pid) as handle:
            rss = [int(line.split()[1]) for line in handle if line.startswith("VmRSS:")]
        with open("/proc/%d/cmdline" % pid, "rb") as handle:
            argv = handle.read().split(b"\0")
    except (OSError, ValueError, IndexError):
        return None
    return (rss[0] if rss else 0), argv


def pss_kb(pid):
    try:
        with open("/proc/%d/smaps_rollup" % pid) as handle:
            for line in handle:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


def classify(runner_pid, pids):
    """The runner's VmRSS, its guardian's (pid, kind, VmRSS), and whether COMMAND runs, among the processes
    carrying the runner's mark (kind: "exec" for `zl-guardian`, "fork" for a forked copy of the runner)."""
    runner_rss, guardian, command = None, None, False
    for pid in pids:
        status = proc_status(pid)
        if status is None:
            continue
        rss, argv = status
        if pid == runner_pid:
            runner_rss = rss
        elif argv and argv[0] == b"zl-guardian":
            guardian = (pid, "exec", rss)
        elif any(RUNNER.encode() in a for a in argv[:2]):
            guardian = (pid, "fork", rss)
        else:
            command = True
    return runner_rss, guardian, command


class MemorySampler:
    """Every `interval` s: the VmRSS of runners waiting for the lock and of holders, and of their guardians."""

    def __init__(self, prefix, runners, clock, interval=0.5):
        self.prefix = prefix
        self.runners = runners  # mark -> (key, Popen)
        self.clock = clock
        self.interval = interval
        self.peak = {}  # (kind, mark) -> max kB
        self.kinds = set()  # of the guardians of waiting runners: "exec" (zl-guardian), "fork" (a copy)
        self.sched = {}  # mark -> seconds the runner waited on a run queue for a CPU, as last seen
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="memory")
        self.thread.daemon = True
        self.thread.start()

    def _note(self, kind, mark, rss):
        if rss:
            self.peak[(kind, mark)] = max(rss, self.peak.get((kind, mark), 0))

    def _run(self):
        while not self.stop.wait(self.interval):
            for mark, pids in marked(self.prefix).items():
                if mark not in self.runners:
                    continue
                key, proc = self.runners[mark]
                waited = run_queue_wait(proc.pid)
                if waited is not None:
                    self.sched[mark] = waited
                state = self.clock.state.get(key)
                runner_rss, guardian, command = classify(proc.pid, pids)
                if state == "waiting":
                    self._note("runner waiting", mark, runner_rss)
                    if guardian:
                        self._note("guardian waiting", mark, guardian[2])
                        self.kinds.add(guardian[1])
                elif state == "acquired" and command:
                    self._note("runner holding", mark, runner_rss)
                    if guardian:
                        self._note("guardian holding", mark, guardian[2])

    def finish(self):
        self.stop.set()
        self.thread.join(10)
        by_kind = {}
        for (kind, dummy), rss in self.peak.items():
            by_kind.setdefault(kind, []).append(rss)
        return by_kind


def run_queue_wait(pid):
    """Seconds a process has spent runnable but waiting for a CPU (/proc/PID/schedstat, second field)."""
    try:
        with open("/proc/%d/schedstat" % pid) as handle:
            return int(handle.read().split()[1]) / 1e9
    except (OSError, ValueError, IndexError):
        return None


def mb(kb_values):
    if not kb_values:
        return "-"
    return "%.1f / %.1f (%d)" % (statistics.median(kb_values) / 1024.0, max(kb_values) / 1024.0, len(kb_values))


def machine_busy():
    """CPU seconds the whole machine has been busy (all cores; /proc/stat: everything but idle and iowait)."""
    with open("/proc/stat") as handle:
        fields = [int(v) for v in handle.readline().split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / float(CLK_TCK)


def child_cpu():
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


# --- 1. one slot, N nodes ------------------------------------------------------------------------------------


def fire_slot(ens, probe, root, nodes, jobs, session_timeout, job_seconds, workdir, prefix):
    slot = "n%d" % nodes
    fifo = os.path.join(workdir, "fire-%d" % nodes)
    os.mkfifo(fifo)
    # Held open for writing by us: the runners' wrappers open it without blocking and block in read until we
    # close it (EOF for all of them at once): that close is the fire instant.
    trigger = os.open(fifo, os.O_RDWR)
    runs_files = [os.path.join(workdir, "runs-%d-%d" % (nodes, job)) for job in range(jobs)]
    clock = LineClock()
    runners = {}
    procs = []
    try:
        for node in range(nodes):
            for job in range(jobs):
                mark = "%sslot%d-%d-%d" % (prefix, nodes, node, job)
                cmd = ["sh", "-c", 'read _ < "$0"; exec "$@"', fifo, RUNNER, "run", "scale-job-%d" % job,
                       "--slot", slot, "--wait", "900", "--hosts", ens.hosts(), "--root", root,
                       "--session-timeout", str(session_timeout), "--owner", "node%d" % node, "--",
                       "sh", "-c", 'echo "$1" >> "$2"; sleep "$3"', "sh", "node%d" % node, runs_files[job],
                       str(job_seconds)]
                proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.PIPE, env=runner_env(None, mark))
                clock.add((node, job), proc.stderr)
                runners[mark] = ((node, job), proc)
                procs.append(((node, job), proc))
        # Every wrapper must have the FIFO open before we close it (a later open would wait for ever).
        deadline = time.monotonic() + 120
        waiting = [proc.pid for dummy, proc in procs]
        while waiting:
            waiting = [pid for pid in waiting if not _has_open(pid, fifo)]
            if waiting and time.monotonic() > deadline:
                raise SystemExit("%d runner wrappers never opened the fire FIFO" % len(waiting))
            time.sleep(0.05)
        time.sleep(0.5)  # let the wrappers' start-up settle out of the measurement
        before = probe.snapshot()
        cpu_before = child_cpu()
        busy_before = machine_busy()
        sampler = MemorySampler(prefix + "slot%d-" % nodes, runners, clock)
        fired = time.monotonic()
        os.close(trigger)
        trigger = None
        codes = {}
        for key, proc in procs:
            try:
                codes[key] = proc.wait(timeout=900)
            except subprocess.TimeoutExpired:
                proc.kill()
                codes[key] = proc.wait()
        all_exited = time.monotonic() - fired
        runner_cpu = child_cpu() - cpu_before
        busy = machine_busy() - busy_before
        memory = sampler.finish()
        guardian_kinds = sampler.kinds
        run_queue = list(sampler.sched.values())
        clock.close()
        after = probe.snapshot()
    finally:
        if trigger is not None:
            os.close(trigger)
        for dummy, proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        kill_marked(prefix + "slot%d-" % nodes)
    started = []  # COMMANDs that got as far as noting their run
    for path in runs_files:
        with open(path) if os.path.exists(path) else open(os.devnull) as handle:
            started.append(len(handle.read().split()))
    runs, states = [], []  # attempts in each job's run record of the slot, and their states
    for job in range(jobs):
        attempts = slot_attempts(ens.hosts(), root, "scale-job-%d" % job, slot)
        runs.append(len(attempts))
        states.extend(attempts)
    decisions = []
    undecided = 0
    for key, events in clock.lines.items():
        moment = _decision(events)
        if moment is None:
            undecided += 1
        else:
            decisions.append(moment - fired)
    gaps = []
    for job in range(jobs):
        # The runners that found the slot done under the lock, one after the other (not the run itself).
        moments = []
        for node in range(nodes):
            events = [(t, event) for t, event, dummy in clock.lines[(node, job)]]
            if "acquired" in [event for dummy, event in events]:
                moments.extend(t for t, event in events if event == "done")
        moments.sort()
        gaps.extend(moments[i + 1] - moments[i] for i in range(len(moments) - 1))
    events = {}
    for key, evs in clock.lines.items():
        for dummy, event, dummy_fields in evs:
            events[event] = events.get(event, 0) + 1
    exits = {}
    for code in codes.values():
        exits[code] = exits.get(code, 0) + 1
    return {
        "nodes": nodes, "runners": nodes * jobs, "runs": runs, "started": started, "states": states,
        "decisions": decisions, "undecided": undecided,
        "all_exited": all_exited, "runner_cpu": runner_cpu, "zk": Probe.diff(before, after), "memory": memory,
        "events": events, "exits": exits, "guardian_kinds": guardian_kinds, "busy": busy,
        "step": statistics.median(gaps) if gaps else float("nan"),
        "run_queue": statistics.median(run_queue) if run_queue else float("nan"),
    }


def slot_attempts(hosts, root, name, slot):
    """The states of the attempts in the run record of one slot (`zoo-locked history --json`)."""
    out = subprocess.run([RUNNER, "history", name, "--json", "--limit", "1000", "--hosts", hosts, "--root", root],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=120, check=False)
    if out.returncode != 0:
        raise SystemExit("zoo-locked history %s failed (exit %d): %s" % (name, out.returncode, out.stderr))
    for run in json.loads(out.stdout)["runs"]:
        if run["slot"] == slot:
            return [attempt["state"] for attempt in run["attempts"]]
    return []


def _decision(events):
    """When a runner decided: its first done/skipped/error line, else its acquired line (it ran the slot)."""
    final = [t for t, event, dummy in events if event in ("done", "skipped", "error")]
    acquired = [t for t, event, dummy in events if event == "acquired"]
    return final[0] if final else (acquired[0] if acquired else None)


def _has_open(pid, path):
    try:
        return os.readlink("/proc/%d/fd/0" % pid) == path
    except OSError:
        return False


def slot_report(results, jobs, session_timeout, job_seconds):
    print("## Scale: one slot fired on N nodes at once\n")
    print("A three-server ensemble (Debian's ZooKeeper 3.8 on 127.0.0.1, tickTime %d ms), all on this machine. "
          "Each of N nodes fires the same %d jobs for one slot at the same instant: N x %d runners "
          "`zoo-locked run JOB --slot S --wait 900 --session-timeout %g -- COMMAND` (COMMAND: note the run, then "
          "`sleep %g`), held at a FIFO and released together by closing it. *Decision*: the runner's `done` line "
          "(the slot needs no run from it), or its `acquired` line when it is the one that runs the slot; timed "
          "from the fire to the arrival of the line on the runner's stderr pipe. Requests: packets received by the "
          "three servers (`mntr` `zk_packets_received`, our own `mntr`/`srvr` probes taken out; every request, "
          "session connect and ping counts), of which reads and writes as the servers count them "
          "(`zk_cnt_readlatency`, `zk_cnt_updatelatency`; a `sync` counts as a read, the creation and the close "
          "of a session as writes). Transactions: the difference of "
          "the leader's zxid (exact). CPU: the runners' (with the COMMANDs they waited for, from getrusage; not their "
          "guardians), the server JVMs', and the whole machine's over the same span (/proc/stat: the difference is "
          "the guardians, this benchmark itself and any other work on the machine).\n"
          % (TICK_MS, jobs, jobs, session_timeout, job_seconds))
    print("| nodes | runners | runs per slot, each job (must be 1) | COMMANDs started, each job | decision p50 s | "
          "p99 s | max s | "
          "all exited s | requests per slot | per runner | reads | writes | transactions per slot | per runner | "
          "runners' CPU s | servers' CPU s | machine's busy CPU s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        zk = r["zk"]
        d = r["decisions"]
        requests = total(zk, "requests")
        txns = zk["transactions"]
        print("| %d | %d | %s | %s | %.2f | %.2f | %.2f | %.1f | %d | %.1f | %d | %d | %s | %s | %.1f | %.1f | %.1f |"
              % (r["nodes"], r["runners"], ", ".join(str(n) for n in r["runs"]),
                 ", ".join(str(n) for n in r["started"]),
                 statistics.median(d) if d else float("nan"), quantile(d, 0.99) if d else float("nan"),
                 max(d) if d else float("nan"), r["all_exited"], requests, requests / float(r["runners"]),
                 total(zk, "reads"), total(zk, "writes"), txns if txns is not None else "?",
                 "%.1f" % (txns / float(r["runners"])) if txns is not None else "?", r["runner_cpu"],
                 total(zk, "cpu"), r["busy"]))
    print()
    print("*Runs per slot*: the attempts in each job's run record of the slot (`zoo-locked history`); the slot's "
          "promise is exactly one. *COMMANDs started*: the COMMANDs that got as far as noting their run in a file "
          "(never more than one; 0 when the one attempt was stopped before its COMMAND got that far). States of the "
          "attempts: %s.%s\n"
          % ("; ".join("%d nodes: %s" % (r["nodes"], _counts(_tally(r["states"]))) for r in results),
             " An attempt `stopped` with exit 70 (`lost`) is a holder whose heartbeat got no answer through the "
             "leader for half its session timeout, here because the machine's two cores were overloaded: the kill "
             "path stopped COMMAND, as designed, and the slot is not run again (without `--retry-failed`)."
             if any("stopped" in r["states"] for r in results) else ""))
    print("Runner exits and log events, per run: %s\n"
          % "; ".join("%d nodes: exits %s, events %s%s" % (
              r["nodes"], _counts(r["exits"]), _counts(r["events"]),
              ", %d runner(s) without a decision" % r["undecided"] if r["undecided"] else "") for r in results))
    kinds = set()
    for r in results:
        kinds |= r["guardian_kinds"]
    print("Resident memory (`VmRSS` of /proc/PID/status), median / max MB (number of processes seen), the "
          "largest value seen per process. The runner and its guardian (the dead-man switch, a second small "
          "Python process; here %s) are separate processes, counted separately. Sampled every 0.5 s: *waiting* "
          "is a runner that logged `waiting`, *holding* one whose COMMAND runs (%g s; `-` when no scan of /proc fell "
          "within it: the held-locks section below measures holders at length).\n"
          % (" and ".join(sorted({"exec": "`zl-guardian`, a fresh interpreter",
                                  "fork": "an idle forked copy of the runner, whose VmRSS counts the pages it "
                                          "shares copy-on-write with the runner"}[k] for k in kinds)) or "none seen",
             job_seconds))
    print("| nodes | runner waiting | its guardian waiting | runner holding | its guardian holding |")
    print("|---|---|---|---|---|")
    for r in results:
        m = r["memory"]
        cells = (r["nodes"], mb(m.get("runner waiting")), mb(m.get("guardian waiting")), mb(m.get("runner holding")),
                 mb(m.get("guardian holding")))
        print("| %d | %s | %s | %s | %s |" % cells)
    print()
    if len(results) >= 2:
        growth_report(results)


def _tally(values):
    counts = {}
    for value in values:
        counts[value] = counts.get(value, 0) + 1
    return counts


def _counts(counts):
    return ", ".join("%s x%d" % (k, v) for k, v in sorted(counts.items(), key=lambda kv: str(kv[0])))


def _exponent(x0, y0, x1, y1):
    """b in y ~ x^b between two points (1: linear)."""
    import math

    if y0 <= 0 or y1 <= 0:
        return float("nan")
    return math.log(y1 / y0) / math.log(float(x1) / x0)


def growth_report(results):
    first, last = results[0], results[-1]
    x0, x1 = first["runners"], last["runners"]

    def exp(f):
        return _exponent(x0, f(first), x1, f(last))

    rows = [
        ("requests per slot", exp(lambda r: total(r["zk"], "requests"))),
        ("transactions per slot", exp(lambda r: r["zk"]["transactions"] or 0)),
        ("bytes of the answers per slot", exp(lambda r: total(r["zk"], "bytes"))),
        ("runners' CPU seconds", exp(lambda r: r["runner_cpu"])),
        ("servers' CPU seconds", exp(lambda r: total(r["zk"], "cpu"))),
        ("decision p50", exp(lambda r: statistics.median(r["decisions"]))),
        ("decision p99", exp(lambda r: quantile(r["decisions"], 0.99))),
        ("time until all exited", exp(lambda r: r["all_exited"])),
    ]
    print("### How it grows\n")
    print("Growth exponent b from %d to %d runners (y ~ runners^b: 1 is linear, above 1.1 faster than linear):\n"
          % (x0, x1))
    print("| figure | b | |")
    print("|---|---|---|")
    faster = []
    for name, b in rows:
        verdict = "faster than linear" if b > 1.1 else ("about linear" if b >= 0.9 else "slower than linear")
        if b > 1.1:
            faster.append(name)
        print("| %s | %.2f | %s |" % (name, b, verdict))
    cores = os.cpu_count() or 1
    print()
    print("Faster than linear here: %s.\n" % (", ".join(faster) if faster else "none"))
    per_runner = ", ".join("%.1f" % (total(r["zk"], "requests") / float(r["runners"])) for r in results)
    txn_runner = ", ".join("%.1f" % ((r["zk"]["transactions"] or 0) / float(r["runners"])) for r in results)
    print("Requests and transactions: every runner costs a fixed number of them whatever N (a session and its "
          "close, a read of the run record, a contender created and deleted, a `sync` and `getChildren` each time "
          "it looks at the queue), and a waiter watches only its predecessor, so a release wakes one runner, not "
          "the herd. Per runner: %s requests and %s transactions for %s runners (the first slot's few extra ones "
          "per job, the run record and the one run, weigh less as N grows). The answers are another matter: a "
          "`getChildren` lists every contender in the queue, so the bytes the servers sent back (`zk_response_bytes`) "
          "were %s KB per runner, growing with N (exponent %.2f above): the one figure here that grows faster "
          "than linearly by design, and harmless at these sizes (a contender's name is 50 bytes).\n"
          % (per_runner, txn_runner, ", ".join(str(r["runners"]) for r in results),
             ", ".join("%.1f" % (total(r["zk"], "bytes") / 1024.0 / r["runners"]) for r in results), rows[2][1]))
    print("Time to a decision: all N x %d runners are Python processes started at the same instant on this "
          "machine's %d cores, next to the three servers. Their CPU time per slot (%s s for %s runners) divided by "
          "the cores is a floor under the time until the last of them has decided (%s s; until all exited: %s s), so "
          "here the decision time is dominated by CPU, not by ZooKeeper. And the CPUs were busy: the median runner "
          "spent %s s runnable but waiting for a CPU (its main thread's run-queue time, /proc/PID/schedstat, "
          "sampled every 0.5 s), against a median decision time of %s s (the machine is shared with other work: "
          "see the load averages). On top of that, the queued runners of a job "
          "take the lock one after the other once the run is over (each reads the record, finds the slot done, "
          "and lets go): a serial chain as long as the queue, %s ms per step (median gap between two decisions of "
          "one job). Both are linear in N; growth beyond that in the table is the machine overloaded (scheduler, "
          "JVMs and runners sharing %d cores), not the protocol. On real nodes each node starts only its own "
          "runners, on its own CPU, and what remains is the serial chain per job.\n"
          % (len(first["runs"]), cores, ", ".join("%.1f" % r["runner_cpu"] for r in results),
             ", ".join(str(r["runners"]) for r in results), ", ".join("%.1f" % max(r["decisions"]) for r in results),
             ", ".join("%.1f" % r["all_exited"] for r in results),
             ", ".join("%.1f" % r["run_queue"] for r in results),
             ", ".join("%.1f" % statistics.median(r["decisions"]) for r in results),
             ", ".join("%.0f" % (1000 * r["step"]) for r in results), cores))


# --- 2. held locks and the heartbeat ----------------------------------------------------------------------------


def hold_locks(ens, probe, root, count, session_timeout, window, prefix):
    """`count` runners each holding its own lock: the ensemble's and runners' cost over `window` seconds."""
    clock = LineClock()
    procs = {}
    marks = {}
    attempt = next(ATTEMPTS)  # fresh lock names and marks: a killed earlier attempt's nodes may still be there
    try:
        # Started in batches, each once the one before holds: the steady state is what is measured here, and
        # hundreds of interpreters starting at once on two cores can starve the holders' heartbeats (a holder that
        # hears nothing from the leader for half its session timeout stops COMMAND and lets go, as it must). Such
        # losses are counted and reported, and the window counts only the runners that hold.
        for i in range(count):
            mark = "%sheld%d-%d-%d" % (prefix, count, attempt, i)
            cmd = [RUNNER, "run", "scale-held-%d-%d" % (attempt, i), "--hosts", ens.hosts(), "--root", root,
                   "--session-timeout", str(session_timeout), "--", "sleep", "3600"]
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                    env=runner_env(None, mark))
            clock.add(i, proc.stderr)
            procs[i] = proc
            marks[mark] = proc.pid
            if len(procs) % HELD_BATCH == 0 or len(procs) == count:
                failure = _wait_holding(clock, procs, 60 + HELD_BATCH)
                if failure:
                    return {"count": count, "failed": failure}
                time.sleep(1.0)
        lost_before = [i for i, proc in procs.items() if proc.poll() is not None]
        # Until the guardians are fresh interpreters and start-up work has ended.
        time.sleep(min(5.0, window))
        pids = list(marks.values())
        group = marked(prefix + "held%d-%d-" % (count, attempt))
        guardians = []
        runner_rss, guardian_rss, runner_pss, guardian_pss = [], [], [], []
        for mark, members in group.items():
            rss, guardian, dummy = classify(marks.get(mark), members)
            if rss:
                runner_rss.append(rss)
                runner_pss.append(pss_kb(marks[mark]) or 0)
            if guardian:
                guardians.append(guardian[0])
                guardian_rss.append(guardian[2])
                guardian_pss.append(pss_kb(guardian[0]) or 0)
        client_before = sum(_cpu_or_zero(pid) for pid in pids + guardians)
        before = probe.snapshot()
        time.sleep(window)
        after = probe.snapshot()
        client_after = sum(_cpu_or_zero(pid) for pid in pids + guardians)
        lost = [i for i, proc in procs.items() if proc.poll() is not None]
        reasons = [line for i in lost for line in clock.raw.get(i, []) if line.startswith("zoo-locked: lost ")]
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)  # the runner stops `sleep`, releases and exits
        for proc in procs.values():
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        clock.close()
        kill_marked(prefix + "held%d-%d-" % (count, attempt))
    zk = Probe.diff(before, after)
    if len(lost) * 2 > count:
        return {"count": count, "failed": "%d of %d runners lost their lock: %s" % (len(lost), count, reasons[:1])}
    # Holding during the window: all but those lost before it, less half of those lost in it (on average).
    holding = count - len(lost_before) - (len(lost) - len(lost_before)) / 2.0
    return {"count": count, "zk": zk, "seconds": window_seconds(zk), "holding": holding,
            "lost_before": len(lost_before), "lost_in": len(lost) - len(lost_before), "reasons": reasons,
            "client_cpu": client_after - client_before, "lost": lost, "runner_rss": runner_rss,
            "guardian_rss": guardian_rss, "runner_pss": runner_pss, "guardian_pss": guardian_pss}


def window_seconds(zk):
    return statistics.mean(v["seconds"] for k, v in zk.items() if isinstance(k, int))


def _wait_holding(clock, procs, timeout):
    """None once every runner of procs holds its lock or has exited (lost it), else what went wrong."""
    deadline = time.monotonic() + timeout
    while True:
        gone = [i for i, proc in procs.items() if proc.poll() is not None]
        holding = [i for i in procs if clock.state.get(i) == "acquired" and i not in gone]
        if len(holding) + len(gone) == len(procs):
            return None
        if time.monotonic() > deadline:
            return "%d of %d runners hold their lock after %.0f s, %d exited" % (len(holding), len(procs), timeout,
                                                                                 len(gone))
        time.sleep(0.2)


def _cpu_or_zero(pid):
    try:
        return jvm_cpu(pid)
    except (OSError, ValueError, IndexError):
        return 0.0


def idle(probe, window):
    before = probe.snapshot()
    time.sleep(window)
    after = probe.snapshot()
    zk = Probe.diff(before, after)
    return {"count": 0, "zk": zk, "seconds": window_seconds(zk), "holding": 0, "lost_before": 0, "lost_in": 0,
            "reasons": [],
            "client_cpu": 0.0, "lost": [], "runner_rss": [], "guardian_rss": [], "runner_pss": [],
            "guardian_pss": []}


def fit(points):
    """Least squares y = a + b x; returns a, b and the largest relative residual (points with x > 0)."""
    xs = [p[0] for p in points]
    ys = [p[1] for p in points]
    mx, my = statistics.mean(xs), statistics.mean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    b = sum((x - mx) * (y - my) for x, y in points) / sxx if sxx else 0.0
    a = my - b * mx
    worst = max([abs(y - (a + b * x)) / y for x, y in points if x > 0 and y > 0] or [0.0])
    return a, b, worst


def held_report(rows, session_timeout, window):
    interval = HEARTBEAT_SHARE * session_timeout
    print("## Scale: held locks and the heartbeat\n")
    print("K runners on this machine each hold their own lock (COMMAND `sleep 3600`, session timeout T = %g s, so a "
          "heartbeat every %g x T = %g s: a `sync` and a `getData` of the runner's own node, pipelined; no write). "
          "The runners connect to any of the three servers; a `sync` from a client of a follower is sent on to the "
          "leader. Measured over a %g s window once all K hold and have settled: the requests the servers received "
          "(`mntr`, as above), the transactions (zxid), and the CPU time of the server JVMs (utime + stime from "
          "/proc/PID/stat) and of the runners with their guardians. K = 0 is the idle ensemble. The request counts do "
          "not depend on the machine; the CPU figures do: the servers run with the test harness's JVM options "
          "(tests/zkharness.py: 256 MB heap, serial GC, C1 compiler only, chosen for a quick start, not for "
          "throughput) on the same two cores as the K runners.\n"
          % (session_timeout, HEARTBEAT_SHARE, interval, window))
    print("| held locks started | holding in the window | lost before / in the window | requests/s, all servers | "
          "from the leader's clients | from the followers' clients | transactions | servers' CPU, % of one core | "
          "leader's | followers' | runners' + guardians' CPU, % of one core | runner VmRSS MB | runner Pss MB | "
          "guardian VmRSS MB | guardian Pss MB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    points_req, points_cpu = [], []
    reasons = []
    shares = (0.0, 0.0)
    client_share = 0.0
    for r in rows:
        if "failed" in r:
            print("| %d | failed: %s | | | | | | | | | | | | | |" % (r["count"], r["failed"].replace("|", "/")))
            continue
        zk, secs = r["zk"], r["seconds"]
        req = total(zk, "requests") / secs
        leader = sum(v["requests"] for k, v in zk.items() if isinstance(k, int) and v["role"] == "leader") / secs
        cpu = total(zk, "cpu") / secs
        leader_cpu = sum(v["cpu"] for k, v in zk.items() if isinstance(k, int) and v["role"] == "leader") / secs
        points_req.append((r["holding"], req))
        points_cpu.append((r["holding"], cpu))
        reasons.extend(r["reasons"])
        shares = (leader / req if req else 0.0, leader_cpu / cpu if cpu else 0.0)
        client_share = r["client_cpu"] / secs / r["holding"] if r["holding"] else 0.0
        print("| %d | %g | %d / %d | %.1f | %.1f | %.1f | %s | %.1f | %.1f | %.1f | %.1f | %s | %s | %s | %s |"
              % (r["count"], r["holding"], r["lost_before"], r["lost_in"], req, leader, req - leader,
                 zk["transactions"], 100 * cpu, 100 * leader_cpu, 100 * (cpu - leader_cpu),
                 100 * r["client_cpu"] / secs, mb(r["runner_rss"]), mb(r["runner_pss"]), mb(r["guardian_rss"]),
                 mb(r["guardian_pss"])))
    print()
    print("(MB columns: median / max (number of processes). *Holding in the window*: the runners started, less "
          "those that lost their lock before the window, less half of those that lost it during the window; the "
          "fits below use it.)\n")
    if reasons:
        print("Lost locks: %d holder(s) lost their lock with no fault injected, each with a line like `%s`. That is "
              "the kill path doing its job: a holder that has had no answer through the leader for %g x T stops "
              "COMMAND and lets go, and here the answers were late because this machine's two cores were "
              "overloaded (the servers, the runners and other work; see the load averages below). On nodes that "
              "are not starved of CPU for seconds, this does not happen.\n"
              % (len(reasons), reasons[0][len("zoo-locked: "):], TERM_SHARE))
    if len(points_req) < 3:
        print("Too few measured points for a fit.\n")
        return "too few measured points"
    a_req, b_req, worst_req = fit(points_req)
    a_cpu, b_cpu, dummy = fit(points_cpu)
    top = max(p[0] for p in points_req)
    req_1000 = a_req + TARGET_LOCKS * b_req
    cpu_1000 = a_cpu + TARGET_LOCKS * b_cpu
    # CPU grows less than linearly (batching in the servers): the slope between the two largest K is the other,
    # lower, extrapolation.
    (k1, c1), (k2, c2) = sorted(points_cpu)[-2:]
    cpu_1000_marginal = c2 + (TARGET_LOCKS - k2) * (c2 - c1) / float(k2 - k1)
    idle_cpu = min(points_cpu)[1]
    per_lock = ", ".join("%.3f" % (100 * (c - idle_cpu) / k) for k, c in sorted(points_cpu) if k)
    txns = [r["zk"]["transactions"] for r in rows if "zk" in r]
    clean_txns = [r["zk"]["transactions"] for r in rows if "zk" in r and not r["lost_in"]]
    lost_in = sum(r["lost_in"] for r in rows if "zk" in r)
    expected = 2 / interval
    per_lock_values = [(c - idle_cpu) / k for k, c in sorted(points_cpu) if k]
    falling = all(later < earlier for earlier, later in zip(per_lock_values, per_lock_values[1:]))
    print("Requests: least squares over K = %s gives requests/s = %.1f + **%.3f x K** (largest deviation of a "
          "measured K from the line: %.1f %%)%s, against the design's 2 requests per heartbeat, one heartbeat per "
          "%g s (%.2f/s per lock)%s. Transactions in the windows: %s%s. Servers' CPU: %s %% of one core per held lock "
          "above the idle ensemble at K = %s%s; the least-squares line is %.3f + %.5f x K cores.\n"
          % (", ".join("%g" % p[0] for p in points_req), a_req, b_req, 100 * worst_req,
             ": linear" if worst_req <= 0.05 else "", interval, expected,
             "; kazoo sent no pings of its own (the heartbeats keep the connection busy)"
             if abs(b_req - expected) <= 0.02 * expected else "",
             ", ".join(str(t) for t in txns),
             (": the heartbeat writes nothing" if all(t == 0 for t in clean_txns) else "")
             + (" (the transactions of a window come from the %d holder(s) that lost their lock in it: a contender "
                "deleted, a session closed)" % lost_in if lost_in and any(txns) else ""),
             per_lock, ", ".join("%g" % k for k, dummy in sorted(points_cpu) if k),
             ": less than linear (the cost per lock falls as K grows)" if falling else "", a_cpu, b_cpu))
    print("**Target**: %d held locks at T = %g s cost the ensemble at most %.1f requests/s per lock (%d/s in all) "
          "and no transaction, and at most %d %% of one core for the three servers together (a small share of an "
          "ensemble that has a core or more per server). Why this is the lowest reasonable band: a leader-checked "
          "heartbeat needs a `sync` per interval (a read alone may be answered by a follower cut off from the "
          "leader) and a read that proves the node is still ours; the `sync` is not a transaction (the zxid did not "
          "move in any window), so 2 reads per interval and no write is the floor for this design.\n"
          % (TARGET_LOCKS, session_timeout, TARGET_REQUESTS, TARGET_LOCKS * TARGET_REQUESTS, 100 * TARGET_CPU))
    ok_req = req_1000 <= TARGET_LOCKS * TARGET_REQUESTS
    ok_cpu = cpu_1000 <= TARGET_CPU
    ok_txn = all(t == 0 for t in clean_txns)
    print("Extrapolated to %d held locks (measured up to %g; beyond that it is extrapolation): **%.0f requests/s** "
          "(%s), %s, and **%.0f %% of one core** for the three servers by the least-squares line (%s; %.0f %% by "
          "the slope between K = %g and %g). The request columns count what each server's own clients sent; "
          "every `sync` of a follower's client is also forwarded to the leader over the quorum link: at K = %g the "
          "leader had %.0f %% of the client requests and %.0f %% of the servers' CPU. The runners pay too: %.2f %% of "
          "one core per held lock on the nodes (runner and guardian, at K = %g).\n"
          % (TARGET_LOCKS, top, req_1000, "met" if ok_req else "NOT met",
             "no transactions (met)" if ok_txn else "transactions seen (NOT met)", 100 * cpu_1000,
             "met" if ok_cpu else "NOT met", 100 * cpu_1000_marginal, k1, k2, top, 100 * shares[0],
             100 * shares[1], 100 * client_share, top))
    if not (ok_req and ok_cpu and ok_txn):
        print("Not met, on this machine (two cores shared by the three JVMs, up to %d runners and other work), and "
              "the request count is already the design's floor: what is left is the servers' CPU per request. "
              "Product code is unchanged; what I would change, in this order: (1) drop the heartbeat's `getData` "
              "for a data watch on the runner's own node: ZooKeeper delivers a watch event before the answer to any "
              "later request of the same session, so the answer to the `sync` alone would carry the same evidence "
              "(node still there, not revoked), at 1 request per interval instead of 2, about half the cost; this "
              "needs the same review as any change to the bound (docs/architecture.md). (2) Sites with many long "
              "jobs can use a longer session timeout (T = 20 s halves the rate, at the price of a slower failover). "
              "A larger HEARTBEAT_SHARE is the poor lever: it raises the shortest safe session timeout (with "
              "tickTime %d ms, %.1f s at %g; %.1f s at %g).\n"
              % (max(r["count"] for r in rows), TICK_MS, min_session_timeout(TICK_MS), HEARTBEAT_SHARE,
                 (TICK_MS / 2000.0 + KILL_LANDING) / (1.0 - 2 * HEARTBEAT_SHARE - KILL_SHARE), 2 * HEARTBEAT_SHARE))
    return "%d held locks at T = %g s: %.0f requests/s (%s), %s, %.0f %% of one core (%s; target %d %%)" % (
        TARGET_LOCKS, session_timeout, req_1000, "met" if ok_req else "NOT met",
        "no transactions" if ok_txn else "transactions seen", 100 * cpu_1000, "met" if ok_cpu else "NOT met",
        100 * TARGET_CPU)


# --- main -------------------------------------------------------------------------------------------------------


def int_list(text):
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError("a comma-separated list of whole numbers, e.g. 10,50,100") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError("a comma-separated list of whole numbers >= 1, e.g. 10,50,100")
    return values


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int_list, default=[10, 50, 100], help="node counts (default 10,50,100)")
    parser.add_argument("--jobs", type=int, default=5, help="jobs fired by every node for the slot (default 5)")
    parser.add_argument("--held", type=int_list, default=[100, 200, 400],
                        help="numbers of locks held at once (default 100,200,400)")
    parser.add_argument("--session-timeout", type=float, default=10.0, help="runners' session timeout (default 10)")
    parser.add_argument("--window", type=float, default=20.0, help="seconds measured per held-lock count")
    parser.add_argument("--job-seconds", type=float, default=1.0, help="COMMAND's duration in the slot test")
    parser.add_argument("--quick", action="store_true", help="2 and 4 nodes, 5 and 10 held locks, 3 s windows")
    args = parser.parse_args()
    if args.quick:
        args.nodes, args.held, args.window, args.job_seconds = [2, 4], [5, 10], 3.0, 0.5
    if args.session_timeout < min_session_timeout(TICK_MS):
        parser.error("--session-timeout: at least %.1f s with tickTime %d ms"
                     % (min_session_timeout(TICK_MS), TICK_MS))
    if not os.path.exists(RUNNER):
        raise SystemExit("no %s: run `make venv` first" % RUNNER)
    workdir = tempfile.mkdtemp(prefix="zoo-locked-scale-")
    prefix = "scale-%d-" % os.getpid()
    ens = ZKEnsemble(workdir, size=3, tick_time=TICK_MS, init_limit=10, sync_limit=5, max_session_timeout=60000)
    ens.start()
    load_before = os.getloadavg()
    try:
        probe = Probe(ens)
        root = "/scale-%d" % os.getpid()
        print("## Scale: machine and ensemble\n")
        print("Machine: %s. Date: %s. Ensemble: three servers of Debian's ZooKeeper 3.8 on 127.0.0.1 (modes %s).\n"
              % (machine(), time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                 ", ".join("%d %s" % kv for kv in sorted(ens.modes().items()))))
        slots = [fire_slot(ens, probe, root, n, args.jobs, args.session_timeout, args.job_seconds, workdir, prefix)
                 for n in args.nodes]
        slot_report(slots, args.jobs, args.session_timeout, args.job_seconds)
        rows = [idle(probe, args.window)]
        for count in args.held:
            rows.append(hold_locks(ens, probe, root, count, args.session_timeout, args.window, prefix))
        heartbeat = held_report(rows, args.session_timeout, args.window)
        load_after = os.getloadavg()
        print("Other work on the machine: the load average was %.2f %.2f %.2f (1, 5, 15 min) when this benchmark "
              "started, before any of its runners, on %d cores (%s); at the end %.2f %.2f %.2f, most of it this "
              "benchmark's own runners. The slot table's last column against the runners' and servers' CPU shows "
              "how much of the machine went elsewhere.\n"
              % (load_before + (os.cpu_count() or 1,
                                "a machine shared with other work" if load_before[0] > 1.0 else "nearly idle")
                 + load_after))
    finally:
        ens.stop()
        kill_marked(prefix)
        shutil.rmtree(workdir, ignore_errors=True)
    bad = [(r["nodes"], r["runs"]) for r in slots
           if any(n != 1 for n in r["runs"]) or any(n > 1 for n in r["started"])]
    failed = [r["count"] for r in rows if "failed" in r]
    print("## Scale verdict\n")
    print("- runs per slot: %s (must all be 1): %s"
          % ("; ".join("%d nodes %s" % (r["nodes"], r["runs"]) for r in slots), "met" if not bad else "NOT met"))
    print("- heartbeat, extrapolated: %s" % heartbeat)
    if failed:
        print("- held locks: K = %s could not be measured (more than half the runners never held or lost their "
              "lock)" % failed)
    sys.stdout.flush()
    if bad or failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
