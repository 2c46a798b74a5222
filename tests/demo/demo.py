"""make demo: a zoo-locked cluster in containers, and what it does when a job fires everywhere and a node dies.

    .venv/bin/python tests/demo/demo.py up     # make demo: (re)build the cluster, show, leave it up
    .venv/bin/python tests/demo/demo.py show   # only the demonstrations, on the cluster that is up
    python3 tests/demo/demo.py down            # make demo-down: remove it (idempotent)

The cluster is the Molecule scenario molecule/demo: three cron nodes and a three-server ZooKeeper ensemble,
containers zl-demo-*, rolled out with playbooks/site.yml and the demo's job list
(molecule/demo/group_vars/cron_nodes.yml, whose job commands this script runs too). The demonstrations start
`zoo-locked run` through `docker exec` on the nodes, all at the same instant, and print a timeline of what
each node's runner said (tests/demo/timeline.py reads its event lines). `make demo` runs
`make setup venv`, `tests/images/build` and then `up`; it is not part of `make test`
(tests/demo/test_timeline.py checks the timeline code against real runners there).
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)

from timeline import Fleet, Outcome, render  # noqa: E402

SCENARIO = "demo"
PREFIX = "zl-demo-"
NODES = ["node1", "node2", "node3"]
SERVERS = ["zk1", "zk2", "zk3"]
NETWORK = PREFIX + "net"
VOLUME = PREFIX + "shared"
VENV_BIN = os.path.join(REPO, ".venv", "bin")
COLLECTIONS = os.path.join(REPO, ".cache", "collections")
JOBS_FILE = os.path.join(REPO, "molecule", "demo", "group_vars", "cron_nodes.yml")
LOG_DIR = os.path.join(REPO, ".cache", "demo")

# Run inside each node: sleep until the agreed instant (the nodes share the host's clock), say so, then become
# the runner. Starting `docker exec` takes a varying fraction of a second; this takes it out of the picture.
STARTER = ("import os, sys, time; at = float(sys.argv[1]); time.sleep(max(0.0, at - time.time())); "
           "sys.stderr.write('demo-fired late=%.4f\\n' % (time.time() - at)); sys.stderr.flush(); "
           "os.execvp(sys.argv[2], sys.argv[2:])")

LOOK_INSIDE = """
The cluster is up: %(nodes)s (cron + runner) and %(servers)s (ZooKeeper), containers %(prefix)s*.
Look inside:
  docker exec %(prefix)snode1 zoo-locked status              holders and waiters of every lock
  docker exec %(prefix)snode1 zoo-locked history backup      the backup's run: died on %(killed)s, then taken over
  docker exec %(prefix)snode1 zoo-locked history heartbeat   cron's own runs, once a minute on one node
  docker exec %(prefix)snode1 cat /etc/cron.d/zoo-locked     the crontab, the same on every node
  docker exec %(prefix)snode1 cat /shared/runs.log           what the jobs wrote, with host and token
  docker exec %(prefix)snode2 zoo-locked run try -- sleep 30   (meanwhile the same on node3 skips: exit 75)
Tear it down: make demo-down"""

ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class DemoError(Exception):
    pass


class Progress:
    """One line per step, with the time since the start."""

    def __init__(self):
        self.t0 = time.monotonic()
        self.tty = sys.stdout.isatty()
        self._transient = False

    def stamp(self):
        elapsed = int(time.monotonic() - self.t0)
        return "[%d:%02d]" % (elapsed // 60, elapsed % 60)

    def step(self, text):
        self._clear()
        print("%s %s" % (self.stamp(), text), flush=True)

    def transient(self, text):
        """A line that the next one replaces (only on a terminal)."""
        if self.tty:
            self._clear()
            width = shutil.get_terminal_size((100, 20)).columns - 1
            sys.stdout.write(("%s   %s" % (self.stamp(), text))[:width])
            sys.stdout.flush()
            self._transient = True

    def _clear(self):
        if self._transient:
            sys.stdout.write("\r\x1b[K")
            self._transient = False


def docker(*args, check=True, timeout=120):
    try:
        result = subprocess.run(["docker"] + list(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                universal_newlines=True, timeout=timeout, check=False)
    except OSError as exc:
        raise DemoError("cannot run the docker command (%s): `make setup` installs Docker and starts it" % exc)
    if check and result.returncode != 0:
        raise DemoError("docker %s failed (exit %d): %s" % (" ".join(args), result.returncode,
                                                            result.stderr.strip() or result.stdout.strip()))
    return result


def container(node):
    return PREFIX + node


def molecule(progress, action):
    """molecule ACTION -s demo, its output into .cache/demo/molecule.log, a progress line per play."""
    os.makedirs(LOG_DIR, exist_ok=True)
    log_path = os.path.join(LOG_DIR, "molecule.log")
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=COLLECTIONS, ANSIBLE_FORCE_COLOR="0", NO_COLOR="1",
               COLUMNS="250", PATH=VENV_BIN + os.pathsep + os.environ.get("PATH", ""))
    proc = subprocess.Popen([os.path.join(VENV_BIN, "molecule"), action, "-s", SCENARIO], cwd=REPO, env=env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            universal_newlines=True)
    tail = []
    with open(log_path, "a") as log:
        log.write("\n===== molecule %s -s %s (%s)\n" % (action, SCENARIO, time.strftime("%Y-%m-%d %H:%M:%S")))
        for raw in proc.stdout:
            log.write(raw)
            line = ANSI.sub("", raw).strip(" \n\u2502")
            tail = (tail + [line])[-40:]
            play = re.search(r"PLAY \[(.+)\]", line)
            task = re.search(r"TASK \[(.+)\]", line)
            if play:
                progress.step("    %s" % play.group(1))
            elif task:
                progress.transient("    ... %s" % task.group(1))
    if proc.wait() != 0:
        raise DemoError("molecule %s -s %s failed (exit %d); the last lines (all of it in %s):\n%s"
                        % (action, SCENARIO, proc.returncode, log_path, "\n".join(tail)))


def jobs():
    """The demo's job list, as the crontab role rolled it out: {name: job}."""
    import yaml

    with open(JOBS_FILE) as handle:
        data = yaml.safe_load(handle)
    return dict((job["name"], job) for job in data["crontab_jobs"])


def run_args(job, slot, wait):
    """`zoo-locked run` for one of the demo's jobs, as the crontab runs it, but for a slot of our own."""
    args = ["zoo-locked", "run", job["name"], "--slot", slot, "--wait", str(wait)]
    if job.get("timeout"):
        args += ["--timeout", str(job["timeout"])]
    return args + ["--", "/bin/sh", "-c", job["command"]]


def fire(nodes, args, env=None, delay=2.0):
    """Start `args` on every node at the same instant, `delay` seconds from now: (fleet, instant)."""
    fleet = Fleet()
    at = time.time() + delay
    extra = []
    for key, value in (env or {}).items():
        extra += ["-e", "%s=%s" % (key, value)]
    for node in nodes:
        fleet.start(node, ["docker", "exec"] + extra + [container(node), "python3", "-c", STARTER, "%.3f" % at]
                    + args)
    return fleet, at


def show_timeline(fleet, at):
    """Print the timeline (seconds from the agreed instant) and say how close together the starts were."""
    fired = [line for line in fleet.sorted_lines() if line.text.startswith("demo-fired ")]
    rest = [line for line in fleet.sorted_lines() if not line.text.startswith("demo-fired ")]
    lates = [float(line.text.split("late=")[1]) for line in fired]
    if lates:
        print("  started on %s at %s, all within %.0f ms of that instant (their own clocks)\n"
              % (", ".join(sorted(line.node for line in fired)), time.strftime("%H:%M:%S", time.localtime(at)),
                 max(lates) * 1000))
    print("  %9s  %-6s %-9s %s" % ("time", "node", "event", "what it means"))
    for row in render(rest, at):
        print(row)
    print()
    for sentence in Outcome(rest).summary():
        print("  => %s" % sentence)
    print()


def check_codes(codes, allowed, what):
    bad = dict((node, code) for node, code in codes.items() if code not in allowed)
    if bad:
        raise DemoError("%s: unexpected exit codes %s (expected %s)" % (what, bad, sorted(allowed)))


def demo_fire_everywhere(progress, slot):
    job = jobs()["invoices"]
    progress.step("Demo 1: the exclusive job `invoices` fired on all three nodes at the same moment")
    print("\n  As cron starts it (--wait 0: skip if another node holds the lock), for a slot of its own:\n"
          "  zoo-locked run invoices --slot %s --wait 0 -- /bin/sh -c '...'\n" % slot)
    fleet, at = fire(NODES, run_args(job, slot, 0))
    codes = fleet.wait(120)
    show_timeline(fleet, at)
    outcome = Outcome(fleet.lines)
    if len(outcome.ran) != 1:
        raise DemoError("invoices ran %d times, expected once: %s" % (len(outcome.ran), outcome.ran))
    check_codes(codes, (0, 75), "invoices")

    progress.step("Demo 1b: the same slot fired again, as by a node whose cron is late (--wait 30)")
    print()
    fleet, at = fire(NODES, run_args(job, slot, 30))
    codes = fleet.wait(120)
    show_timeline(fleet, at)
    check_codes(codes, (0,), "invoices again")
    if Outcome(fleet.lines).ran:
        raise DemoError("the finished slot %s ran again" % slot)


def demo_failover(progress, slot):
    job = jobs()["backup"]
    seconds = 20
    progress.step("Demo 2: a %d s backup started on all three nodes, then its node is killed" % seconds)
    print("\n  zoo-locked run backup --slot %s --wait 120 -- /bin/sh -c '...'   (session timeout: 6 s)\n" % slot)
    fleet, at = fire(NODES, run_args(job, slot, 120), env={"BACKUP_SECONDS": seconds})
    try:
        acquired = fleet.watch(lambda line: line.event == "acquired", 60)
        if acquired is None:
            raise DemoError("no node took the backup's lock within 60 s")
        holder = acquired.node
        queued = fleet.watch(lambda line: len([x for x in fleet.lines if x.event == "waiting"]) >= 2, 30)
        started = fleet.watch(lambda line: line.node == holder and line.stream == "out", 30)
        if queued is None or started is None:
            raise DemoError("the backup did not start on %s with two nodes waiting" % holder)
        time.sleep(2.0)  # let the backup run a little before the crash (for the timeline; nothing waits on it)
        fleet.mark(holder, "killed", "docker kill %s: the node dies in the middle of the backup" % container(holder))
        docker("kill", container(holder))
        killed_at = time.time()
        takeover = fleet.watch(lambda line: line.event == "failover", 90)
        if takeover is None:
            raise DemoError("no node took over the backup within 90 s of the kill")
        codes = fleet.wait(120)
    finally:
        fleet.kill()
    show_timeline(fleet, at)
    survivors = [node for node in NODES if node != holder]
    check_codes(dict((n, c) for n, c in codes.items() if n in survivors), (0,), "backup")
    print("  %s took over %.1f s after %s was killed (session timeout 6 s).\n"
          % (takeover.node, takeover.t - killed_at, holder))
    history = docker("exec", container(takeover.node), "zoo-locked", "history", "backup", "--json", "--limit", "1")
    (run,) = json.loads(history.stdout)["runs"]
    print("  zoo-locked history backup (on %s): slot %s %s" % (takeover.node, run["slot"], run["state"]))
    for attempt in run["attempts"]:
        print("    attempt on %-6s token %-12s %-9s started %s  ended %s" % (
            attempt.get("host"), attempt.get("token"), attempt.get("state"), attempt.get("start") or "-",
            attempt.get("end") or "-"))
    print()
    if [a.get("state") for a in run["attempts"]] != ["died", "succeeded"]:
        raise DemoError("the backup's history is not 'died, then succeeded': %s" % run)
    return holder


def restart(progress, node):
    progress.step("Restarting %s (docker start, then cron)" % node)
    docker("start", container(node))
    docker("exec", container(node), "service", "cron", "start")
    deadline = time.monotonic() + 60
    while docker("exec", container(node), "zoo-locked", "status", check=False).returncode != 0:
        if time.monotonic() > deadline:
            raise DemoError("%s does not reach ZooKeeper after its restart" % node)
        time.sleep(1)


def wait_for_cluster(progress):
    progress.step("Checking that every node's runner reaches the ensemble")
    for node in NODES:
        deadline = time.monotonic() + 60
        while True:
            status = docker("exec", container(node), "zoo-locked", "status", check=False)
            if status.returncode == 0:
                break
            if time.monotonic() > deadline:
                raise DemoError("zoo-locked status fails on %s: %s" % (node, status.stderr.strip()))
            time.sleep(1)


def down(progress):
    """Remove the demo's containers, network and volume, and Molecule's memory of them."""
    if shutil.which("docker") is None or docker("info", check=False).returncode != 0:
        progress.step("No Docker engine answers: nothing to remove")
        return
    names = [container(name) for name in SERVERS + NODES]
    present = docker("ps", "-a", "--format", "{{.Names}}", "--filter", "label=zoolocked.scenario=" + PREFIX).stdout.split()
    present += [name for name in names if docker("container", "inspect", name, check=False).returncode == 0]
    removed = []
    if present:
        docker("rm", "-f", "-v", *sorted(set(present)))
        removed.append("%d containers" % len(set(present)))
    if docker("network", "inspect", NETWORK, check=False).returncode == 0:
        docker("network", "rm", NETWORK)
        removed.append("network " + NETWORK)
    if docker("volume", "inspect", VOLUME, check=False).returncode == 0:
        docker("volume", "rm", VOLUME)
        removed.append("volume " + VOLUME)
    # Molecule remembers the instances it made: forget them, or its next converge would skip creating them.
    if os.access(os.path.join(VENV_BIN, "molecule"), os.X_OK):
        env = dict(os.environ, PATH=VENV_BIN + os.pathsep + os.environ.get("PATH", ""), NO_COLOR="1")
        subprocess.run([os.path.join(VENV_BIN, "molecule"), "reset", "-s", SCENARIO], cwd=REPO, env=env,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    progress.step("Removed: %s" % (", ".join(removed) if removed else "nothing (no demo cluster was up)"))


def show(progress):
    stamp = time.strftime("%Y%m%dT%H%M%S")
    wait_for_cluster(progress)
    demo_fire_everywhere(progress, "demo-%s" % stamp)
    killed = demo_failover(progress, "demo-%s" % stamp)
    restart(progress, killed)
    print(LOOK_INSIDE % {"nodes": ", ".join(NODES), "servers": ", ".join(SERVERS), "prefix": PREFIX,
                         "killed": killed})


def up(progress):
    progress.step("Removing an earlier demo cluster, if any")
    down(progress)
    progress.step("molecule converge -s demo: containers, ZooKeeper ensemble, runner and crontab "
                  "(2 to 3 minutes; log in .cache/demo/molecule.log)")
    molecule(progress, "converge")
    show(progress)


def main(argv=None):
    parser = argparse.ArgumentParser(description="The zoo-locked demo cluster (make demo, make demo-down).")
    parser.add_argument("action", choices=["up", "show", "down"])
    args = parser.parse_args(argv)
    progress = Progress()
    try:
        {"up": up, "show": show, "down": down}[args.action](progress)
    except DemoError as exc:
        progress.step("FAILED: %s" % exc)
        return 1
    progress.step("Done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
