# -*- coding: utf-8 -*-
# Copyright: zoo-locked maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The kill path: everything that stops COMMAND, in one place.

- ``Supervisor`` runs COMMAND in its own process group while the lock is held. It passes the signals the runner
  receives on to the group, enforces ``--timeout``, and stops COMMAND when the session guard (``_lock.Guard``) has
  had no answer through the leader for TERM_SHARE of the session timeout (SIGTERM) or KILL_SHARE (SIGKILL), or
  when the lock is lost or revoked. Signals are sent before anything is logged, and logging never blocks.
- ``Guardian`` is a dead-man switch: a small process outside the runner's process group and session (a process
  group kill or ``timeout -s KILL`` of the runner leaves it alive), forked before any thread exists. It knows
  COMMAND's group, this run's marker and a deadline, which the guard pushes forward at every answer from the
  leader. When the deadline passes (the runner is stopped, stuck, or has heard nothing), when the runner dies
  without saying it is done, or when told, it SIGKILLs COMMAND's group and every process that carries the marker.
- The marker is ``NAME:TOKEN`` in ``ZOO_LOCKED_RUNS`` in COMMAND's environment (the token is unique to this
  holder; a run nested in another locked COMMAND appends its marker to the outer ones). Everything COMMAND starts
  inherits it, daemons that left the process group or the session included, so they are found in ``/proc`` and
  killed before the lock is released. A process that drops its environment (``env -i``) escapes:
  docs/architecture.md says what then protects the data (the fencing token).

Only the standard library is imported: the guardian is forked from this module before kazoo starts a thread.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import errno
import os
import select
import signal
import sys

from ._clock import now
from ._config import KILL_SHARE, TERM_SHARE
from ._guardian import MARK_VAR, _guardian_main, kill_run, marker_of


class Guardian:
    """The runner's side of the dead-man switch: forks the guardian and talks to it through a pipe.

    Messages (one line each): ``m NAME:TOKEN`` (the run's marker, before COMMAND starts), ``g PGID`` (COMMAND's
    group), ``d DEADLINE`` (kill at this ``_clock.now()``, pushed forward at each answer from the leader),
    ``done`` (COMMAND and everything it started are gone). The pipe never blocks the runner: a guardian that
    cannot read (stopped) just misses renewals, which only makes it kill sooner.

    The guardian becomes a fresh interpreter at once (``_start_guardian``): its start-up, about 8 ms of CPU, runs
    beside the runner's import of kazoo instead of between the lock and COMMAND. Runs that never start COMMAND
    (the lock is held elsewhere, the slot is done) pay it too; their guardian ends when the pipe closes.
    """

    def __init__(self):
        read_end, write_end = os.pipe()
        child = os.fork()
        if child == 0:  # the intermediate: a new session, the guardian in it, then gone
            code = 0
            try:
                os.close(write_end)
                os.setsid()
                if os.fork() == 0:
                    _start_guardian(read_end)
            except BaseException:
                code = 1
            os._exit(code)
        os.close(read_end)
        os.waitpid(child, 0)
        os.set_blocking(write_end, False)
        self.fd = write_end
        self.gone = False  # the guardian's end of the pipe closed: it died

    def send(self, message):
        if self.fd is None:
            return
        try:
            os.write(self.fd, message)
        except BlockingIOError:
            pass  # full: the guardian is stopped, and kills on the last deadline it read
        except OSError as exc:
            if exc.errno == errno.EPIPE:
                self.gone = True

    def mark(self, marker):
        self.send(b"m %s\n" % marker.encode("utf-8"))

    def arm(self, pgid, deadline):
        self.send(b"g %d\nd %.6f\n" % (pgid, deadline))

    def renew(self, deadline):
        self.send(b"d %.6f\n" % deadline)

    def done(self):
        self.send(b"done\n")
        if self.fd is not None:
            try:
                os.close(self.fd)
            except OSError:
                pass
            self.fd = None


# The guardian's program: a fresh interpreter (see _exec_guardian) that imports _guardian from the folder and
# package named in its environment and runs _guardian_main on the pipe whose number it is given.
GUARDIAN_CODE = ("import os, sys; where, package = os.environ.pop('ZL_GUARDIAN').split('|', 1); "
                 "sys.path.insert(0, where); __import__(package + '._guardian', fromlist=['_'])._guardian_main("
                 "int(sys.argv[1]))")


def _start_guardian(read_end):
    """In the forked child: become the guardian at once, a fresh interpreter started while the runner imports
    kazoo and connects (on a machine with two cores its start-up is then off the run's path: a run that starts
    COMMAND finds it ready; the hand-over to a waiting runner does not wait for it). Never returns."""
    try:
        # Ignored here, before the exec (an ignored signal stays ignored across exec): the guardian itself does
        # not import `signal` (with `enum`, it would double the guardian's start-up time).
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGPIPE):
            signal.signal(signum, signal.SIG_IGN)
        _exec_guardian(read_end)
    except BaseException:
        pass
    _guardian_main(read_end)


def _exec_guardian(read_end):
    """Become the guardian: a new interpreter whose command line does not name zoo-locked, so that
    `pkill -f zoo-locked` or `pkill -f python`, aimed at runners, leaves the dead-man switch alone (its name,
    zl-guardian, keeps it out of `pkill zoo-locked` and `killall python3` too). Returns only if the exec fails."""
    package = __name__.rpartition(".")[0]
    where = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for dummy in range(package.count(".")):
        where = os.path.dirname(where)
    os.environ["ZL_GUARDIAN"] = "%s|%s" % (where, package)
    os.set_inheritable(read_end, True)
    os.execv(sys.executable, ["zl-guardian", "-I", "-S", "-c", GUARDIAN_CODE, str(read_end)])


class Supervisor:
    """Runs COMMAND in its own process group and watches it, the clock, signals and the session."""

    RANK = {"signal": 0, "timeout": 1, "lost": 2}  # the strongest reason decides the exit code

    def __init__(self, runner):
        import subprocess
        from ._lock import Guard

        self.popen = subprocess.Popen
        self.guard_class = Guard
        self.runner = runner
        self.log = runner.log
        self.options = runner.options
        self.session = runner.session
        self.guardian = runner.guardian
        self.pgid = None
        self.marker = None
        self.stopping = None  # why COMMAND is being stopped: "signal", "timeout" or "lost"
        self.detail = None  # and what made it so
        self.termed = False
        self.kill_at = None
        self.killed = False

    def _signal_group(self, signum):
        try:
            os.killpg(self.pgid, signum)
        except OSError as exc:
            if exc.errno != errno.ESRCH:
                raise

    def _stop(self, why, kill_at, signum=signal.SIGTERM, **fields):
        """Stop COMMAND for a reason: one SIGTERM (signals received are all passed on), SIGKILL at kill_at.

        The signal goes first, the log line after it: a write to a stuck stderr must never come between a
        decision to stop and the signal (and the log does not block anyway).
        """
        if why == "signal" or not self.termed:
            self._signal_group(signum)
            self.termed = self.termed or why != "signal"
        if self.kill_at is None or kill_at < self.kill_at:
            self.kill_at = kill_at
        if self.stopping is None or self.RANK[why] > self.RANK[self.stopping]:
            self.stopping = why
            self.detail = fields.get("detail")
            self.log("stopping", name=self.runner.name, host=self.runner.host, reason=why,
                     signal=signal.Signals(signum).name, kill_in=max(0.0, kill_at - now()), **fields)

    def _kill(self):
        self.killed = True
        kill_run(self.pgid, self.marker)

    def run(self, token):
        from ._runner import EX_NOEXEC, EX_NOTFOUND, EX_SOFTWARE_LOST, EX_TIMEOUT

        runner, options, session = self.runner, self.options, self.session
        wake_read, wake_write = os.pipe()
        for fd in (wake_read, wake_write):
            os.set_blocking(fd, False)

        def ping():
            try:
                os.write(wake_write, b"\0")
            except OSError:
                pass

        def nothing(signum, frame):
            pass  # the signal number arrives through the wakeup pipe

        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD):
            signal.signal(signum, nothing)
        old_wakeup = signal.set_wakeup_fd(wake_write, warn_on_full_buffer=False)
        env = dict(os.environ)
        env.pop("ZOO_LOCKED_AUTH", None)  # the cluster's credentials are not the job's business
        env["ZOO_LOCKED_NAME"] = runner.name
        env["ZOO_LOCKED_HOLDER"] = "%s:%d" % (runner.host, os.getpid())
        env["ZOO_LOCKED_TOKEN"] = str(token)
        self.marker = marker_of(runner.name, token)
        env[MARK_VAR] = (env.get(MARK_VAR, "") + " " + self.marker).strip()
        group = {"process_group": 0} if sys.version_info >= (3, 11) else {"preexec_fn": os.setpgrp}
        guard = terminal = proc = None
        # Known to the guardian before COMMAND exists: should the runner die in between, the marker finds it.
        self.guardian.mark(self.marker)
        try:
            try:
                proc = self.popen(runner.command, env=env, **group)
            except OSError as exc:
                self.log("error", name=runner.name, host=runner.host,
                         reason="cannot run %s: %s" % (runner.command[0], exc.strerror))
                return EX_NOTFOUND if exc.errno == errno.ENOENT else EX_NOEXEC
            self.pgid = proc.pid
            guard = self.guard_class(runner.lock, ping,
                                     on_answer=lambda sent: self.guardian.renew(sent + KILL_SHARE * session.session_timeout))
            self.guardian.arm(proc.pid, guard.last_ok + KILL_SHARE * session.session_timeout)
            terminal = _give_terminal(proc.pid)
            guard.start()
            timeout_at = now() + options.timeout if options.timeout else None
            while os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
                current = now()
                try:
                    received = os.read(wake_read, 512)
                except BlockingIOError:
                    received = b""
                for signum in bytearray(received):
                    if signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                        self._stop("signal", current + options.kill_after, signum,
                                   received=signal.Signals(signum).name)
                # Session safety, counted from the send time of the last answer that passed through the leader,
                # with the session timeout the servers grant now (a reconnect may have shortened it).
                session_timeout = session.session_timeout
                silent_term = guard.last_ok + TERM_SHARE * session_timeout
                silent_kill = guard.last_ok + KILL_SHARE * session_timeout
                if guard.lost.is_set():
                    self._stop("lost", min(current + min(options.kill_after, 0.25 * session_timeout), silent_kill),
                               detail=guard.reason)
                elif self.guardian.gone:
                    # Without its dead-man switch, a run that is then killed would leave COMMAND running unlocked.
                    self._stop("lost", min(current + min(options.kill_after, 0.25 * session_timeout), silent_kill),
                               detail="the guardian process died (it was killed): the run cannot keep its promise")
                elif current >= silent_term:
                    self._stop("lost", silent_kill, detail="no answer through the ZooKeeper leader for %.1fs of a "
                               "%.1fs session" % (current - guard.last_ok, session_timeout))
                if timeout_at is not None and current >= timeout_at:
                    self._stop("timeout", current + options.kill_after, timeout=options.timeout)
                if self.kill_at is not None and current >= self.kill_at and not self.killed:
                    self._kill()
                # Sleep until something happens: a signal (SIGCHLD too), a guard report, or the next deadline.
                upcoming = [t for t in (silent_term, silent_kill, timeout_at, None if self.killed else self.kill_at)
                            if t is not None and t > current]
                _wait_readable(wake_read, min([guard.interval] + [t - current for t in upcoming]))
            # COMMAND ended while the lock was not surely ours (the guardian may have killed it while the runner was
            # stopped): that is a lost lock, whatever COMMAND's exit says.
            session_timeout = session.session_timeout
            if guard.lost.is_set() or now() >= guard.last_ok + TERM_SHARE * session_timeout:
                self._stop("lost", min(now(), guard.last_ok + KILL_SHARE * session_timeout), detail=guard.reason or
                           "no answer through the ZooKeeper leader for %.1fs" % (now() - guard.last_ok))
            # COMMAND's leader has exited but is not reaped yet, so its group id cannot be reused. What is left of
            # its group, and whatever it started elsewhere (daemons), would run without the lock, so they go too:
            # at once after a normal end, and after the rest of the --kill-after grace when they were signalled.
            if self.stopping is not None and not self.killed:
                while _group_members(self.pgid, proc.pid) and now() < self.kill_at:
                    _wait_readable(wake_read, min(0.05, max(0.0, self.kill_at - now())))
            kill_run(self.pgid, self.marker)
            returncode = proc.wait()
        finally:
            if proc is not None and proc.returncode is None:
                kill_run(self.pgid, self.marker)  # an error on the way: nothing may run on once the lock goes
            if guard is not None:
                guard.stop()
            _take_terminal(terminal)
            signal.set_wakeup_fd(old_wakeup)
            for fd in (wake_read, wake_write):
                os.close(fd)
        code = 128 - returncode if returncode < 0 else returncode
        if self.stopping == "lost":
            self.log("lost", name=runner.name, host=runner.host, token=token,
                     reason=self.detail or guard.reason or "no answer from ZooKeeper", command_exit=code)
            return EX_SOFTWARE_LOST
        if self.stopping == "timeout":
            return EX_TIMEOUT
        return code


def _group_members(pgid, leader):
    """Whether a process other than ``leader`` is still in process group ``pgid`` (Linux /proc)."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == leader:
            continue
        try:
            with open("/proc/%s/stat" % entry, "rb") as handle:
                fields = handle.read().rsplit(b")", 1)[1].split()
        except (IOError, OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != b"Z":
            return True
    return False


def _wait_readable(fd, delay):
    try:
        select.select([fd], [], [], delay)
    except InterruptedError:
        pass


def _give_terminal(pgid):
    """Make COMMAND's group the terminal's foreground group, as a shell would, so it can read the terminal."""
    try:
        if not os.isatty(0) or os.tcgetpgrp(0) != os.getpgrp():
            return None
        os.tcsetpgrp(0, pgid)
        return os.getpgrp()
    except OSError:
        return None


def _take_terminal(pgid):
    if pgid is None:
        return
    old = signal.signal(signal.SIGTTOU, signal.SIG_IGN)
    try:
        os.tcsetpgrp(0, pgid)
    except OSError:
        pass
    finally:
        signal.signal(signal.SIGTTOU, old)
