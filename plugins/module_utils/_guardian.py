# -*- coding: utf-8 -*-
# Copyright: zoo-locked maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The guardian: the dead-man switch's own process (``_supervisor.Guardian`` starts it), and the kill of a run.

The guardian is a fresh interpreter (``python -I -S``) that imports only this module, which imports only what
it needs from the standard library: it starts on every run that starts COMMAND, and each import is time the run
pays (``signal`` alone, with ``enum``, would double it). ``kill_run`` is shared with the runner's supervisor.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
import select

from ._clock import now

SIGKILL = 9  # Linux; spelled out so that the guardian need not import `signal`
SWEEP_ROUNDS = 20  # a daemon that forks while it is being killed is looked for again, this many times at most

MARK_VAR = "ZOO_LOCKED_RUNS"


def marker_of(name, token):
    return "%s:%d" % (name, int(token))


def _group_of(pid):
    """The process group id of ``pid`` (from /proc; a zombie's too), or None when it is gone."""
    try:
        with open("/proc/%d/stat" % pid, "rb") as handle:
            return int(handle.read().rsplit(b")", 1)[1].split()[2])
    except (IOError, OSError, IndexError, ValueError):
        return None


def _read(path):
    """The whole content of a /proc file with a NUL in front, or None."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    chunks = [b"\0"]
    try:
        while True:
            chunk = os.read(fd, 65536)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)
    except OSError:
        return None
    finally:
        os.close(fd)


def marked_pids(marker, skip=()):
    """[(pid, pgid)] of the processes whose environment carries ``marker`` in ZOO_LOCKED_RUNS.

    COMMAND's ZOO_LOCKED_RUNS is the runner's own (if it runs inside another locked COMMAND) plus this run's
    marker, so a zoo-locked run nested in a job is found by the outer run's sweep too. The group is read right
    after the environment: a process that forks and exits at once may be gone a moment later, its group not.
    """
    wanted = marker.encode("utf-8")
    prefix = b"\0" + MARK_VAR.encode("ascii") + b"="
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) in skip:
            continue
        environ = _read("/proc/%s/environ" % entry)  # os-level reads: this runs between COMMAND's end and the release
        if environ is None:
            continue  # gone, a zombie, or not ours to read
        at = environ.find(prefix)
        if at >= 0 and wanted in environ[at + len(prefix):].split(b"\0", 1)[0].split(b" "):
            found.append((int(entry), _group_of(int(entry))))
    return found


def kill_run(pgid, marker, skip=()):
    """SIGKILL COMMAND's process group and every process that carries the run's marker; how many were signalled.

    A marked process is killed with its whole process group when the group is its own (made by it or by another
    marked process whose leader is gone): the group kill takes at once the members that the sweep has not seen
    yet, children forked between its read of /proc and its kill.
    """
    killed = 0
    if pgid:
        try:
            os.killpg(pgid, SIGKILL)
            killed += 1
        except OSError:
            pass
    if marker:
        skip = set(skip) | {os.getpid()}
        groups_killed = {pgid, os.getpgrp()}
        for dummy in range(SWEEP_ROUNDS):
            found = marked_pids(marker, skip)
            if not found:
                break
            pids = [pid for pid, dummy_group in found]
            for pid, group in found:
                if group is not None and group not in groups_killed:
                    leader = _group_of(group)
                    if leader != group or group in pids:  # the leader is gone, or marked: the group is the run's
                        groups_killed.add(group)
                        try:
                            os.killpg(group, SIGKILL)
                            killed += 1
                        except OSError:
                            pass
                try:
                    os.kill(pid, SIGKILL)
                    killed += 1
                except OSError:
                    pass
                skip.add(pid)  # dead or dying (a zombie until reaped, which keeps no environment)
    return killed


def _guardian_main(read_end, pending=b""):
    """The guardian's whole life, from the messages in ``pending`` on; never returns."""
    try:  # SIGTERM, SIGINT, SIGHUP and SIGPIPE are ignored already (_supervisor._start_guardian)
        try:  # its own name, so that `pkill zoo-locked` (which matches names) leaves the dead-man switch alone
            with open("/proc/self/comm", "w") as comm:
                comm.write("zl-guardian")
        except (IOError, OSError):
            pass
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)  # keep no output pipe of cron's open
        for fd in [int(fd) for fd in os.listdir("/proc/self/fd")]:
            if fd > 2 and fd not in (read_end, null):
                try:
                    os.close(fd)  # nor anything else the runner was given
                except OSError:
                    pass
        pgid = marker = deadline = None
        done = False
        ready = True  # what is pending first
        while True:
            if ready:
                lines = pending.split(b"\n")
                pending = lines.pop()
                for line in lines:
                    words = line.split()
                    if words[:1] == [b"m"] and len(words) == 2:
                        marker = words[1].decode("utf-8")
                    elif words[:1] == [b"g"] and len(words) == 2:
                        pgid = int(words[1])
                    elif words[:1] == [b"d"] and len(words) == 2:
                        deadline = float(words[1])
                    elif words == [b"done"]:
                        done = True
                        pgid = marker = deadline = None
            if deadline is not None and (pgid or marker) and now() >= deadline:
                kill_run(pgid, marker)
                deadline = None  # until the runner says more, or goes
            armed = deadline is not None and (pgid or marker)
            try:
                ready = select.select([read_end], [], [], max(0.0, deadline - now()) if armed else None)[0]
            except InterruptedError:
                ready = []
            if ready:
                chunk = os.read(read_end, 4096)
                if not chunk:  # the runner is gone: if it did not say "done", COMMAND may be running unlocked
                    if not done:
                        kill_run(pgid, marker)
                    break
                pending += chunk
    except BaseException:
        pass
    os._exit(0)
