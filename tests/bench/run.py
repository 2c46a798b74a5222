"""zoo-locked benchmarks against a real ZooKeeper: prints figures measured side by side in one run.

    .venv/bin/python tests/bench/run.py [--rounds N] [--quick]

1. per-call overhead of `zoo-locked run X -- true`, against the minimal kazoo script
   (tests/bench/kazoo_minimal.py: connect, lock, run, release) and flock(1), interleaved round by round
   so that load on the machine hits all three alike;
2. the hand-over gap between holders under 20-way contention (end of one COMMAND to start of the next);
3. a 20-way start for one slot: number of runs (must be 1) and time until all runners exit;
4. failover after SIGKILL of the holding runner, for session timeouts of 4 s and 10 s.

Targets (issue 2): overhead median ratio runner/kazoo <= 1.0; hand-over gap median <= 20 ms;
failover <= session timeout + 1 s. The output is Markdown, ready for docs/benchmarks.md.
"""

import argparse
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(REPO, "tests"))

from zkharness import ZKServer, wait_for  # noqa: E402

VENV_BIN = os.path.join(REPO, ".venv", "bin")
RUNNER = os.path.join(VENV_BIN, "zoo-locked")
PYTHON = os.path.join(VENV_BIN, "python")


def ms(seconds):
    return "%.1f" % (seconds * 1000.0)


def quantile(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def timed(cmd):
    started = time.perf_counter()
    code = subprocess.call(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    elapsed = time.perf_counter() - started
    if code != 0:
        raise SystemExit("benchmark command failed (exit %d): %s" % (code, " ".join(cmd)))
    return elapsed


def overhead(hosts, root, rounds, lockfile):
    cmds = {
        "zoo-locked run X -- true": [RUNNER, "run", "bench-overhead", "--hosts", hosts, "--root", root, "--", "true"],
        "minimal kazoo script": [PYTHON, os.path.join(HERE, "kazoo_minimal.py"), hosts, root + "/locks/bench-kazoo", "true"],
        "flock FILE true": ["flock", lockfile, "true"],
    }
    for cmd in cmds.values():  # warm the page cache and the .pyc files
        timed(cmd)
    samples = dict((name, []) for name in cmds)
    for dummy in range(rounds):
        for name, cmd in cmds.items():
            samples[name].append(timed(cmd))
    print("## Per-call overhead (%d rounds, interleaved)\n" % rounds)
    print("| command | median ms | p10 ms | p90 ms |")
    print("|---|---|---|---|")
    for name, values in samples.items():
        print("| %s | %s | %s | %s |" % (name, ms(statistics.median(values)), ms(quantile(values, 0.1)),
                                         ms(quantile(values, 0.9))))
    runner = samples["zoo-locked run X -- true"]
    kazoo = samples["minimal kazoo script"]
    ratio = statistics.median(runner) / statistics.median(kazoo)
    paired = statistics.median([a / b for a, b in zip(runner, kazoo)])
    print("\nmedian ratio runner / kazoo script: **%.3f** (median of per-round ratios %.3f; target <= 1.0)\n"
          % (ratio, paired))
    return ratio


def handover(hosts, root, contenders, workdir):
    record = os.path.join(workdir, "handover.log")
    open(record, "w").close()
    # Each COMMAND stamps its start and end; the gap is from one end to the next start.
    script = 'date +"S %s.%N" >> "$1"; sleep 0.02; date +"E %s.%N" >> "$1"'
    procs = [
        subprocess.Popen(
            [RUNNER, "run", "bench-handover", "--wait", "120", "--hosts", hosts, "--root", root, "--",
             "sh", "-c", script, "sh", record],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        for dummy in range(contenders)
    ]
    for proc in procs:
        if proc.wait(timeout=180) != 0:
            raise SystemExit("a contender failed with exit %d" % proc.returncode)
    events = []
    with open(record) as handle:
        for line in handle:
            kind, stamp = line.split()
            events.append((float(stamp), kind))
    events.sort()
    kinds = "".join(kind for dummy_stamp, kind in events)
    if kinds != "SE" * contenders:
        raise SystemExit("runs overlapped or went missing: %s" % kinds)
    gaps = [events[i + 1][0] - events[i][0] for i in range(1, len(events) - 1, 2)]
    print("## Hand-over gap, %d-way contention\n" % contenders)
    print("%d runs, none overlapping. Gap from one COMMAND's end to the next one's start (includes `sh` and "
          "`date` start-up):\n" % contenders)
    print("| median ms | p90 ms | max ms |")
    print("|---|---|---|")
    print("| %s | %s | %s |\n" % (ms(statistics.median(gaps)), ms(quantile(gaps, 0.9)), ms(max(gaps))))
    return statistics.median(gaps)


def slot_start(hosts, root, contenders, workdir, rounds):
    """`contenders` runners for one slot started at once: how many runs, and how long until all exit."""
    record = os.path.join(workdir, "slot-runs")
    results = []
    for round_no in range(rounds):
        open(record, "w").close()
        started = time.perf_counter()
        procs = [
            subprocess.Popen(
                [RUNNER, "run", "bench-slot", "--slot", "r%d" % round_no, "--wait", "60", "--hosts", hosts,
                 "--root", root, "--", "sh", "-c", 'echo run >> "$1"; sleep 0.2', "sh", record],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for dummy in range(contenders)
        ]
        for proc in procs:
            if proc.wait(timeout=120) != 0:
                raise SystemExit("a slot runner failed with exit %d" % proc.returncode)
        elapsed = time.perf_counter() - started
        with open(record) as handle:
            runs = len(handle.readlines())
        results.append((runs, elapsed))
    print("## %d-way start for one slot (0.2 s job)\n" % contenders)
    print("| round | runs (must be 1) | time until all runners exit s |")
    print("|---|---|---|")
    for round_no, (runs, elapsed) in enumerate(results):
        print("| %d | %d | %.2f |" % (round_no + 1, runs, elapsed))
    print()
    return results


def failover(hosts, root, session_timeout, workdir, server):
    started_file = os.path.join(workdir, "failover-%s" % session_timeout)
    name = "bench-failover-%d" % int(session_timeout)
    common = ["--hosts", hosts, "--root", root, "--session-timeout", str(session_timeout)]
    holder = subprocess.Popen([RUNNER, "run", name] + common + ["--", "sleep", "600"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    from kazoo.client import KazooClient

    zk = KazooClient(hosts=hosts)
    zk.start(timeout=10)
    try:
        path = "%s/locks/%s" % (root, name)
        wait_for(lambda: zk.exists(path) and len(zk.get_children(path)) == 1, 10, message="holder")
        waiter = subprocess.Popen(
            [RUNNER, "run", name, "--wait", "120"] + common + ["--", "sh", "-c", 'date +%s.%N > "$1"', "sh",
                                                               started_file],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: len(zk.get_children(path)) == 2, 10, message="waiter queued")
        killed_at = time.time()
        holder.send_signal(signal.SIGKILL)
        holder.wait(10)
        if waiter.wait(timeout=session_timeout + 30) != 0:
            raise SystemExit("the waiter failed with exit %d" % waiter.returncode)
        with open(started_file) as handle:
            took = float(handle.read()) - killed_at
    finally:
        zk.stop()
        zk.close()
    return took


def machine():
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    kazoo_version = subprocess.check_output([PYTHON, "-c", "import kazoo.version as v; print(v.__version__)"],
                                            text=True).strip()
    load = os.getloadavg()
    return ("%s, %d cores, Python %s, kazoo %s, %s; load average at start %.2f %.2f %.2f"
            % (cpu, os.cpu_count(), platform.python_version(), kazoo_version, platform.platform(), *load))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=40, help="rounds of the overhead comparison")
    parser.add_argument("--contenders", type=int, default=20)
    parser.add_argument("--failovers", type=int, default=2, help="repetitions per session timeout")
    parser.add_argument("--quick", action="store_true", help="fewer rounds, for a smoke test")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.failovers = 5, 1
    if not os.path.exists(RUNNER):
        raise SystemExit("no %s: run `make venv` first" % RUNNER)
    workdir = tempfile.mkdtemp(prefix="zoo-locked-bench-")
    server = ZKServer(workdir, tick_time=500, max_session_timeout=60000)
    server.start()
    try:
        root = "/bench-%d" % os.getpid()
        print("# zoo-locked benchmarks\n")
        print("Machine: %s. ZooKeeper: Debian's 3.8 standalone on 127.0.0.1 (tickTime 500 ms). Date: %s.\n"
              % (machine(), time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())))
        ratio = overhead(server.hosts, root, args.rounds, os.path.join(workdir, "flock"))
        gap = handover(server.hosts, root, args.contenders, workdir)
        slots = slot_start(server.hosts, root, args.contenders, workdir, 1 if args.quick else 3)
        print("## Failover after SIGKILL of the holder\n")
        print("Time from `kill -9` of the holding runner to the start of COMMAND on the waiting runner:\n")
        print("| session timeout s | runs s | target s |")
        print("|---|---|---|")
        worst = []
        for session_timeout in (4.0, 10.0):
            runs = [failover(server.hosts, root, session_timeout, workdir, server) for dummy in range(args.failovers)]
            worst.append(max(runs) - session_timeout)
            print("| %g | %s | <= %g |" % (session_timeout, ", ".join("%.2f" % r for r in runs), session_timeout + 1))
        print("\n## Verdict\n")
        print("- overhead ratio %.3f: %s" % (ratio, "met" if ratio <= 1.0 else "NOT met"))
        print("- hand-over gap median %s ms: %s" % (ms(gap), "met" if gap <= 0.020 else "NOT met"))
        print("- one slot, %d-way start: runs %s (must all be 1)" % (args.contenders, [r for r, dummy_elapsed in slots]))
        print("- failover: worst %.2f s over the session timeout: %s"
              % (max(worst), "met" if max(worst) <= 1.0 else "NOT met"))
    finally:
        server.stop()


if __name__ == "__main__":
    main()
