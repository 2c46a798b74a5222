"""The demo's timeline: start one command per node at once, stamp every line they print, tell what happened.

Used by tests/demo/demo.py (the commands are `docker exec NODE zoo-locked run ...`) and by
tests/demo/test_timeline.py (the same code on runners started directly against the test ZooKeeper).

The runner logs one line per event on stderr, ``zoo-locked: EVENT key=value ...`` (plugins/module_utils/
_runner.py, ``Log``): a value is either a bare word or a JSON string, seconds are written ``0.012s``. The
lines carry no time of their own, so each is stamped when it arrives here.
"""

import json
import os
import re
import subprocess
import threading
import time

PREFIX = "zoo-locked: "

# The runner's exit codes (README.md), as the timeline says them.
EXIT_MEANING = {
    0: "ok",
    64: "bad usage",
    69: "ZooKeeper unreachable, nothing run",
    70: "lock lost while running, job stopped",
    75: "lock busy, nothing run",
    78: "bad configuration",
    124: "timeout, job stopped",
    126: "command not executable",
    127: "command not found",
}

_DECODER = json.JSONDecoder()
_KEY = re.compile(r"([a-z_]+)=")


def parse_event(text):
    """(event, fields) for one runner log line, or None when the line is not one.

    Fields are strings as logged, except seconds ("0.012s"), which become floats.
    """
    if not text.startswith(PREFIX):
        return None
    rest = text[len(PREFIX):].rstrip("\n")
    event, _sep, rest = rest.partition(" ")
    if not re.match(r"^[a-z]+$", event):
        return None  # e.g. "zoo-locked: internal error: ..." or a usage message
    fields = {}
    at = 0
    while at < len(rest):
        if rest[at] == " ":
            at += 1
            continue
        key = _KEY.match(rest, at)
        if key is None:
            return None
        at = key.end()
        if rest.startswith('"', at):
            try:
                value, at = _DECODER.raw_decode(rest, at)
            except ValueError:
                return None
        else:
            end = rest.find(" ", at)
            end = len(rest) if end < 0 else end
            value = rest[at:end]
            at = end
            if re.match(r"^\d+(\.\d+)?s$", value):
                value = float(value[:-1])
        fields[key.group(1)] = value
    return event, fields


class Line:
    """One line a node's command printed (or something the demo did to the node), stamped on arrival."""

    def __init__(self, t, node, stream, text, event=None, fields=None):
        self.t = t
        self.node = node
        self.stream = stream  # "err", "out", or "demo" for the demo's own marks (kill, exit)
        self.text = text
        parsed = parse_event(text) if stream == "err" and event is None else None
        self.event, self.fields = parsed if parsed else (event, fields or {})

    def __repr__(self):
        return "Line(%.3f, %r, %r, %r)" % (self.t, self.node, self.stream, self.text)


class Fleet:
    """Commands started together, one per node; every line of their stdout and stderr kept with its time."""

    def __init__(self):
        self.lines = []
        self.procs = {}
        self._cond = threading.Condition()
        self._watchers = []

    def start(self, node, argv, env=None):
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                env=env, start_new_session=True)
        self.procs[node] = proc
        readers = [threading.Thread(target=self._read, args=(node, stream, pipe), daemon=True)
                   for stream, pipe in (("out", proc.stdout), ("err", proc.stderr))]
        for reader in readers:
            reader.start()
        watcher = threading.Thread(target=self._watch, args=(node, proc, readers), daemon=True)
        watcher.start()
        self._watchers.append(watcher)
        return proc

    def _read(self, node, stream, pipe):
        for raw in iter(pipe.readline, b""):
            self.add(Line(time.time(), node, stream, raw.decode("utf-8", "replace").rstrip("\n")))
        pipe.close()

    def _watch(self, node, proc, readers):
        """An "exit" line when the command has ended and said all it had to say."""
        code = proc.wait()
        for reader in readers:
            reader.join()
        self.mark(node, "exit", "exit %d" % code, code=code)

    def add(self, line):
        with self._cond:
            self.lines.append(line)
            self._cond.notify_all()
        return line

    def mark(self, node, event, text, **fields):
        """Put something the demo did into the timeline (e.g. event "killed")."""
        return self.add(Line(time.time(), node, "demo", text, event=event, fields=fields))

    def watch(self, predicate, timeout):
        """The first line for which predicate(line) is true, waiting for it up to timeout seconds (else None)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            seen = 0
            while True:
                for line in self.lines[seen:]:
                    if predicate(line):
                        return line
                seen = len(self.lines)
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(min(left, 0.5))

    def wait(self, timeout):
        """Wait for every command to end (bounded); {node: exit code, None if still running}."""
        deadline = time.monotonic() + timeout
        for watcher in self._watchers:
            watcher.join(max(0.0, deadline - time.monotonic()))
        return dict((node, proc.poll()) for node, proc in self.procs.items())

    def kill(self):
        """Stop whatever is still running (the local docker exec or runner processes and their groups)."""
        for proc in self.procs.values():
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, 9)
                except OSError:
                    pass
                proc.wait()

    def sorted_lines(self):
        with self._cond:
            return sorted(self.lines, key=lambda line: line.t)


# --- what happened --------------------------------------------------------------------------------------


def _token_in(text):
    found = re.search(r"token (\d+)", text or "")
    return found.group(1) if found else None


def _host_in(text):
    found = re.search(r"host ([^,)]+)", text or "") or re.search(r"by (\S+) \(token", text or "") \
        or re.match(r"(\S+) \(token", text or "")
    return found.group(1) if found else None


class Outcome:
    """Who ran the job, who did not and why, for one fleet's lines."""

    def __init__(self, lines):
        self.lines = sorted(lines, key=lambda line: line.t)
        self.tokens = {}  # fencing token -> node that acquired with it
        self.ran = []  # [(node, token)] in order: nodes that got the lock and ran the command
        self.skipped = {}  # node -> token of the holder that made it skip
        self.done = {}  # node -> who had run the slot already (node, as logged)
        self.failover = {}  # node -> token of the holder that died
        self.killed = []
        self.exits = {}
        for line in self.lines:
            f = line.fields
            if line.event == "acquired":
                self.tokens[f.get("token")] = line.node
            elif line.event == "skipped":
                self.skipped[line.node] = _token_in(f.get("holder"))
            elif line.event == "done":
                self.done[line.node] = f.get("record")
            elif line.event == "failover":
                self.failover[line.node] = _token_in(f.get("previous"))
            elif line.event == "killed":
                self.killed.append(line.node)
            elif line.event == "exit":
                self.exits[line.node] = f.get("code")
        # An acquired runner that found its slot done or was killed still held the lock: it ran the command
        # only if the command started (a failover, or no "done" after its "acquired").
        for line in self.lines:
            if line.event == "acquired" and line.node not in self.done:
                self.ran.append((line.node, line.fields.get("token")))

    def node_of_token(self, token, default="another node"):
        return self.tokens.get(token, default)

    def summary(self):
        """Sentences that say what happened."""
        out = []
        for node, token in self.ran:
            how = "ran the job (fencing token %s)" % token
            if node in self.failover:
                how = "took over and ran the job (fencing token %s) after %s died" % (
                    token, self.node_of_token(self.failover[node]))
            if node in self.killed:
                how += ", then was killed"
            out.append("%s %s" % (node, how))
        for node, token in sorted(self.skipped.items()):
            out.append("%s skipped: the lock was held by %s (token %s)" % (node, self.node_of_token(token), token))
        for node, record in sorted(self.done.items()):
            out.append("%s did not run it: the slot had already run (%s)" % (node, _shorten_record(record)))
        return out


def _shorten_record(record):
    found = re.match(r"(\w+) by (\S+) \(token (\d+), exit ([^,)]+)", record or "")
    if not found:
        return record or "?"
    return "%s on %s, token %s, exit %s" % found.groups()


# --- the timeline -----------------------------------------------------------------------------------------


def describe(line, outcome=None):
    """(what, details) for one line, in words."""
    f = line.fields
    who = outcome.node_of_token if outcome is not None else (lambda token, default="?": default)
    event = line.event
    if line.stream == "out":
        return "output", line.text
    if event is None:
        return "stderr", line.text
    if event == "acquired":
        return event, "got the lock, fencing token %s (waited %.2f s)" % (f.get("token"), f.get("waited") or 0.0)
    if event == "waiting":
        token = _token_in(f.get("holder"))
        return event, "lock held by %s (token %s): waits up to %s s" % (
            who(token, _host_in(f.get("holder"))), token, _seconds(f.get("wait")))
    if event == "skipped":
        token = _token_in(f.get("holder"))
        return event, "lock held by %s (token %s): gives up, nothing run" % (who(token, _host_in(f.get("holder"))), token)
    if event == "done":
        return event, "slot %s already ran: %s; not run again" % (f.get("slot"), _shorten_record(f.get("record")))
    if event == "failover":
        token = _token_in(f.get("previous"))
        return event, "slot %s was left running by %s (token %s), whose session expired: runs it now" % (
            f.get("slot"), who(token, _host_in(f.get("previous"))), token)
    if event == "released":
        return event, "job ended with exit %s; lock released after %.2f s" % (f.get("exit"), f.get("held") or 0.0)
    if event in ("lost", "stopping", "error", "missed"):
        return event, " ".join("%s=%s" % (k, v) for k, v in f.items() if k not in ("name", "host"))
    if event == "killed":
        return event, line.text
    if event == "exit":
        code = f.get("code")
        if outcome is not None and line.node in outcome.killed:
            return event, "gone with its node (exit %s)" % code
        if code is not None and code < 0:
            return event, "runner killed by signal %d" % -code
        return event, "runner exited %s (%s)" % (code, EXIT_MEANING.get(code, "the job's own code"))
    return event, " ".join("%s=%s" % (k, v) for k, v in f.items())


def _seconds(value, default="?"):
    if value is None:
        return default
    if isinstance(value, float):
        return ("%.2f" % value).rstrip("0").rstrip(".")
    return str(value).rstrip("s")


def render(lines, t0, show_exits=True):
    """The timeline as text rows: seconds since t0, node, event, what it means."""
    outcome = Outcome(lines)
    rows = []
    for line in sorted(lines, key=lambda line: line.t):
        if line.event == "exit" and not show_exits:
            continue
        what, details = describe(line, outcome)
        rows.append("  %+8.2fs  %-6s %-9s %s" % (line.t - t0, line.node, what, details))
    return rows
