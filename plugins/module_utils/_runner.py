# -*- coding: utf-8 -*-
# Copyright: zoo-locked maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The zoo-locked command: run a command on one node of a cluster at a time.

It lives in module_utils so that the runner role can install the very code the modules use (one lock
protocol, never two copies); on a node it is the package ``zoo_locked``. It imports kazoo only when it
has to talk to ZooKeeper, so that ``--help`` and usage errors are instant.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
import signal
import sys
import time

from . import _config

VERSION = "0.1.0"

# Exit codes (sysexits.h where one fits; documented in --help and README.md).
EX_USAGE = 64
EX_UNAVAILABLE = 69
EX_SOFTWARE_LOST = 70
EX_TEMPFAIL = 75
EX_CONFIG = 78
EX_TIMEOUT = 124
EX_NOEXEC = 126
EX_NOTFOUND = 127

MAX_SECONDS = 31 * 24 * 3600  # nothing this tool waits for takes longer than a month

EXIT_CODES = """exit codes:
  COMMAND's own   COMMAND ran (128+N if it died from signal N)
  64              bad usage, bad lock name, unknown option
  69              ZooKeeper unreachable within the connect timeout (nothing run)
  70              lock lost while COMMAND ran (COMMAND stopped)
  75              lock held elsewhere past --wait (nothing run)
  78              bad or unreadable configuration (file or environment)
  124             --timeout reached (COMMAND stopped)
  126 / 127       COMMAND not executable / not found
  1               internal error (a bug: please report it)

configuration: defaults, then /etc/zoo-locked/zoo-locked.conf (or --config / ZOO_LOCKED_CONFIG), then the
environment (ZOO_LOCKED_HOSTS, ZOO_LOCKED_ROOT, ZOO_LOCKED_SESSION_TIMEOUT, ZOO_LOCKED_CONNECT_TIMEOUT),
then the options. The file is INI with one section [zoo-locked] and the keys hosts, root,
session_timeout and connect_timeout."""


class UsageError(Exception):
    pass


class Interrupted(Exception):
    def __init__(self, signum):
        Exception.__init__(self, signum)
        self.signum = signum


def shown(value):
    """``value`` as one word of a line of text: as it is when plain, else JSON-quoted, every control character
    escaped (``\\u001b``, ``\\n``, ``\\r``).

    Text read from ZooKeeper (a holder's host, owner or purpose, a run record) may have been written by anyone who
    can reach the servers: raw, an escape sequence in it would rewrite the reader's terminal, and a line end would
    forge a line of output or of the log.
    """
    text = str(value)
    if text and text.isprintable() and not any(c in text for c in " \"'=\\"):
        return text
    import json

    # ensure_ascii escapes every character above 0x7e but leaves DEL itself.
    return json.dumps(text).replace("\x7f", "\\u007f")


def printable(value):
    """``value`` with its non-printable characters escaped as Python writes them (``\\x1b``, ``\\n``)."""
    text = str(value)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class Log:
    """One line per event on stderr (and syslog with --syslog): ``zoo-locked: EVENT key=value ...``."""

    def __init__(self, use_syslog=False):
        self.syslog = None
        self.write = None  # made on the first event: a way to write to stderr that never blocks
        self.dropped = 0
        if use_syslog:
            import syslog

            syslog.openlog("zoo-locked", syslog.LOG_PID, syslog.LOG_CRON)
            self.syslog = syslog

    @staticmethod
    def _value(value):
        if isinstance(value, float):
            return "%.3fs" % value
        return shown(value)

    def __call__(self, event, **fields):
        line = "zoo-locked: " + event
        for key, value in fields.items():
            if value is not None:
                line += " %s=%s" % (key, self._value(value))
        if self.write is None:
            self.write = _stderr_writer()
        if self.dropped:
            line += " dropped_before=%d" % self.dropped
        data = (line[:4000] + "\n").encode("utf-8", "replace")  # at most PIPE_BUF: written whole or not at all
        try:
            self.write(data)
            self.dropped = 0
        except (IOError, OSError):
            self.dropped += 1  # stderr is full (a stuck reader): the line is lost, nothing waits for it
        if self.syslog is not None:
            level = self.syslog.LOG_ERR if event in ("error", "lost") else self.syslog.LOG_INFO
            if event in ("skipped", "stopping"):
                level = self.syslog.LOG_WARNING
            self.syslog.syslog(level, line[len("zoo-locked: "):])


def _stderr_writer():
    """A function that writes bytes to stderr and never blocks (it raises OSError instead).

    cron reads the runner's stderr through a pipe, and a reader that stops (a hung mailer) fills it. A blocking
    write there would hold up whatever comes after the log line. O_NONBLOCK cannot be set on fd 2 itself: COMMAND
    shares that open file description, and it would see EAGAIN. A pipe is opened again through /proc (a new
    description of the same pipe); a socket (journald) is written with MSG_DONTWAIT. Files and terminals are
    written as they are.
    """
    import stat

    try:
        mode = os.fstat(2).st_mode
    except OSError:
        mode = 0
    if stat.S_ISFIFO(mode):
        try:
            fd = os.open("/proc/self/fd/2", os.O_WRONLY | os.O_NONBLOCK)
            return lambda data: os.write(fd, data)
        except OSError:
            pass
    elif stat.S_ISSOCK(mode):
        import socket

        try:
            sock = socket.socket(fileno=os.dup(2))
            return lambda data: sock.send(data, socket.MSG_DONTWAIT)
        except OSError:
            pass
    return lambda data: os.write(2, data)


RUN_USAGE = "usage: zoo-locked run NAME [options] -- COMMAND [ARG...]"
STATUS_USAGE = "usage: zoo-locked status [NAME...] [--json] [options]"
HISTORY_USAGE = "usage: zoo-locked history NAME [--json] [--limit N] [options]"
ACL_USAGE = "usage: zoo-locked acl [--fix] [--json] [options]"
USAGE = "usage: zoo-locked {run,status,history,acl} ... (zoo-locked --help, zoo-locked run --help)"

CONNECTION_HELP = """connection (also from the config file and the environment):
  --hosts H:P,...           ZooKeeper servers, comma-separated (default 127.0.0.1:2181)
  --root PATH               root of the lock tree (default /zoo-locked)
  --session-timeout SECONDS ZooKeeper session timeout (default 10)
  --connect-timeout SECONDS give up when no server answers within this (default 5)
  --config FILE             config file (default /etc/zoo-locked/zoo-locked.conf)
  --verbose                 also show kazoo's own log
"""

HELP = {
    None: USAGE + """

Run a command on exactly one node of a cluster at a time, under a ZooKeeper lock.

subcommands:
  run      run COMMAND while holding the lock NAME
  status   show holders and waiters of locks
  history  show the last runs of a job
  acl      check (and with --fix, repair) the ACLs of the lock tree

options:
  -h, --help  show this help and exit
  --version   show the version and exit

""" + EXIT_CODES,
    "run": RUN_USAGE + """

Take the cluster-wide lock NAME, run COMMAND (directly, no shell) in its own process group while holding
it, and release it when COMMAND ends. NAME: 1-100 of A-Z a-z 0-9 . _ - , not starting with '.'.

options:
  --wait SECONDS            wait this long for a held lock (default 0: skip at once, exit 75)
  --timeout SECONDS         longest run: then SIGTERM to COMMAND's process group (exit 124)
  --kill-after SECONDS      SIGKILL this long after a SIGTERM that was not obeyed (default 10)
  --owner TEXT              who runs it, shown to others (default: the user name)
  --purpose TEXT            free text shown to anyone who can read ZooKeeper (default: none)
  --syslog                  log events to syslog (facility cron) too
  -h, --help                show this help and exit

slots (each scheduled run happens once across the cluster):
  --schedule 'CRON EXPR'    the run belongs to the fire time of this schedule nearest to now
  --slot ID                 the run belongs to slot ID (for callers outside cron)
  --retry-failed            run a slot again whose earlier run failed or was stopped
  --max-delay SECONDS       do not start a slot later than this after its time (default: one period)
  --keep N                  run records kept per job (default 100)
  --metrics-dir DIR         write Prometheus metrics for node_exporter's textfile collector
""" + CONNECTION_HELP + "\n" + EXIT_CODES,
    "history": HISTORY_USAGE + """

Show the last runs of a job (needs runs with --schedule or --slot): slot, host, state, duration, exit code.

options:
  --json                    machine-readable output
  --limit N                 how many runs (default 20)
  -h, --help                show this help and exit
""" + CONNECTION_HELP + "\n" + EXIT_CODES,
    "acl": ACL_USAGE + """

With credentials (auth in the config file or ZOO_LOCKED_AUTH), only the cluster's identity may create,
change or delete in the lock tree; anyone may at most read. List the nodes whose ACL is weaker (exit 1 when
there are any), or set the right ACL on every node of the tree with --fix.

options:
  --fix                     set the ACL on every node of the tree
  --json                    machine-readable output
  -h, --help                show this help and exit
""" + CONNECTION_HELP + "\n" + EXIT_CODES,
    "status": STATUS_USAGE + """

Show the holder and the waiters of the named locks (all locks when none is named).

options:
  --json                    machine-readable output
  -h, --help                show this help and exit
""" + CONNECTION_HELP + "\n" + EXIT_CODES,
}

CONNECTION_OPTIONS = ["hosts=", "root=", "session-timeout=", "connect-timeout=", "config=", "verbose", "help"]
SUBCOMMAND_OPTIONS = {
    "run": ["wait=", "timeout=", "kill-after=", "owner=", "purpose=", "syslog", "schedule=", "slot=",
            "retry-failed", "max-delay=", "keep=", "metrics-dir="] + CONNECTION_OPTIONS,
    "status": ["json"] + CONNECTION_OPTIONS,
    "history": ["json", "limit="] + CONNECTION_OPTIONS,
    "acl": ["json", "fix"] + CONNECTION_OPTIONS,
}


class Options:
    """What the command line says; attributes default to None."""

    def __init__(self, subcommand):
        self.subcommand = subcommand
        self.name = None
        self.names = []
        self.wait = 0.0
        self.timeout = None
        self.kill_after = 10.0
        self.owner = self.purpose = None
        self.syslog = self.verbose = self.json = False
        self.hosts = self.root = self.session_timeout = self.connect_timeout = self.config = None
        self.schedule = self.slot = self.max_delay = self.metrics_dir = None
        self.retry_failed = self.fix = False
        self.keep = 100
        self.limit = 20


class HelpShown(Exception):
    pass


def _seconds(option, text, positive=False):
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value <= MAX_SECONDS or (positive and value == 0):
        raise UsageError(
            "option %s: expected a number of seconds %s %d, got %r"
            % (option, "greater than 0 and at most" if positive else "from 0 to", MAX_SECONDS, text)
        )
    return value


def parse(argv):
    """(options, command) from the arguments; raises UsageError, or HelpShown after printing help/version.

    GNU style (--opt VALUE or --opt=VALUE, options and operands mixed), parsed here rather than with
    argparse or getopt: both import gettext and locale, and the runner starts once per cron job on every
    node with an overhead budget of a few milliseconds (see docs/benchmarks.md).
    """
    if not argv or argv[0] in ("-h", "--help"):
        if argv:
            sys.stdout.write(HELP[None])
            raise HelpShown()
        raise UsageError("a subcommand is needed: run, status or history\n" + USAGE)
    if argv[0] == "--version":
        sys.stdout.write("zoo-locked %s\n" % VERSION)
        raise HelpShown()
    subcommand, argv = argv[0], argv[1:]
    if subcommand not in SUBCOMMAND_OPTIONS:
        raise UsageError("unknown subcommand %r: use run, status, history or acl\n%s" % (subcommand, USAGE))
    usage = {"run": RUN_USAGE, "status": STATUS_USAGE, "history": HISTORY_USAGE, "acl": ACL_USAGE}[subcommand]
    command = None
    if subcommand == "run" and "--" in argv:
        at = argv.index("--")
        argv, command = argv[:at], argv[at + 1:]
    known = SUBCOMMAND_OPTIONS[subcommand]
    pairs, operands = [], []
    args = iter(argv)
    for arg in args:
        if arg == "-h":
            arg = "--help"
        if not arg.startswith("--") or arg == "--":
            if arg.startswith("-") and arg != "-":
                raise UsageError("unknown option %s\n%s\nTry 'zoo-locked %s --help'." % (arg, usage, subcommand))
            operands.append(arg)
            continue
        option, equals, value = arg.partition("=")
        if option[2:] + "=" in known:
            if not equals:
                value = next(args, None)
                if value is None:
                    raise UsageError("option %s needs a value\n%s" % (option, usage))
        elif option[2:] in known and not equals:
            value = ""
        else:
            raise UsageError("unknown option %s\n%s\nTry 'zoo-locked %s --help'." % (arg, usage, subcommand))
        pairs.append((option, value))
    options = Options(subcommand)
    for option, value in pairs:
        key = option[2:].replace("-", "_")
        if option == "--help":
            sys.stdout.write(HELP[subcommand])
            raise HelpShown()
        if key in ("wait", "kill_after", "max_delay"):
            value = _seconds(option, value)
        elif key in ("keep", "limit"):
            if not value.isdigit() or not 1 <= int(value) <= 100000:
                raise UsageError("option %s: expected a whole number from 1 to 100000, got %r" % (option, value))
            value = int(value)
        elif key == "timeout":
            value = _seconds(option, value, positive=True)
        elif key in ("syslog", "verbose", "json", "retry_failed", "fix"):
            value = True
        elif key in _config.TEXT_LIMITS:
            try:
                value = _config.check_text(value, key, "option " + option)
            except _config.ConfigError as exc:
                raise UsageError(str(exc))
        elif key in _config.FILE_KEYS:
            try:
                value = _config.check_setting(key, value, option)
            except _config.ConfigError as exc:
                raise UsageError(str(exc))
        setattr(options, key, value)
    if subcommand == "run":
        if command is None:
            raise UsageError("missing '--' before COMMAND\n" + usage)
        if len(operands) != 1:
            raise UsageError("expected exactly one lock NAME, got %d: %s\n%s" % (len(operands), " ".join(operands) or "none", usage))
        options.name = operands[0]
        if not command:
            raise UsageError("no COMMAND after '--'\n" + usage)
        if options.schedule is not None and options.slot is not None:
            raise UsageError("--schedule and --slot exclude each other: a run belongs to one slot\n" + usage)
        if options.slot is not None:
            from ._slots import check_slot_id

            problem = check_slot_id(options.slot)
            if problem:
                raise UsageError("option --slot: " + problem)
        if options.schedule is None and options.slot is None:
            for key in ("retry_failed", "max_delay"):
                if getattr(options, key) not in (None, False):
                    raise UsageError("option --%s needs --schedule or --slot\n%s" % (key.replace("_", "-"), usage))
    elif subcommand == "history":
        if len(operands) != 1:
            raise UsageError("expected exactly one job NAME\n" + usage)
        options.name = operands[0]
    elif subcommand == "acl":
        if operands:
            raise UsageError("acl takes no operands\n" + usage)
    else:
        options.names = operands
    for name in [] if subcommand == "acl" else [options.name] if subcommand != "status" else options.names:
        problem = _config.check_lock_name(name)
        if problem:
            raise UsageError(problem)
    return options, command


def _settings(options):
    flags = dict((key, getattr(options, key, None)) for key in _config.FILE_KEYS)
    flags["config"] = options.config
    return _config.resolve(flags)


def _check_command(command):
    """(exit code, message) when COMMAND cannot run, else None; checked before taking the lock."""
    exe = command[0]
    if "/" in exe:
        if not os.path.exists(exe):
            return EX_NOTFOUND, "command not found: %s" % exe
        if os.path.isdir(exe) or not os.access(exe, os.X_OK):
            return EX_NOEXEC, "command not executable: %s" % exe
        return None
    # shutil.which() would do, but shutil imports bz2 and lzma: too slow for a per-job start-up.
    for folder in os.environ.get("PATH", os.defpath).split(os.pathsep):
        candidate = os.path.join(folder or ".", exe)
        if os.access(candidate, os.X_OK) and not os.path.isdir(candidate):
            return None
    return EX_NOTFOUND, "command not found in PATH: %s" % exe


def _open_session(settings, log, name=None):
    from ._zk import Session, quiet_kazoo, tls_options

    quiet_kazoo(settings.get("verbose"))
    session = Session(settings["hosts"], settings["session_timeout"], settings["connect_timeout"],
                      auth=settings.get("auth"), tls=tls_options(settings))
    session.start()
    return session


def _auth_failures_are_config(exc):
    """Let a refused credential through to the exit code for configuration errors (78)."""
    from ._zk import ZooRefused

    if isinstance(exc, ZooRefused):
        raise exc


class Runner:
    def __init__(self, options, command, settings, log):
        self.options = options
        self.command = command
        self.settings = settings
        self.log = log
        self.name = options.name
        self.host = None
        self.session = None
        self.lock = None
        self.slot = options.slot  # the slot this run belongs to (--slot, or computed from --schedule)
        self.scheduled = None  # the slot's scheduled time (Unix), with --schedule
        self.max_delay = options.max_delay
        self.metrics = {}  # what to report in --metrics-dir

    def main(self):
        import socket

        options, log = self.options, self.log
        self.host = socket.gethostname()
        started = time.monotonic()
        if options.schedule is not None:
            from ._slots import check_schedule, clock, slot_for_schedule

            problem = check_schedule(options.schedule)
            if problem:
                sys.stderr.write("zoo-locked: option --schedule: %s\n%s\n" % (problem, RUN_USAGE))
                return EX_USAGE
            self.slot, self.scheduled, period = slot_for_schedule(options.schedule, clock())
            if self.max_delay is None:
                self.max_delay = period
        problem = _check_command(self.command)
        if problem:
            log("error", name=self.name, host=self.host, reason=problem[1])
            return problem[0]
        from ._supervisor import Guardian

        self.guardian = Guardian()  # forked now, before any thread exists

        def interrupt(signum, frame):
            raise Interrupted(signum)

        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, interrupt)
        try:
            return self._locked(started)
        except Interrupted as exc:
            log("stopping", name=self.name, host=self.host, reason="signal %d before COMMAND started" % exc.signum)
            return 128 + exc.signum
        finally:
            for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                signal.signal(signum, signal.SIG_IGN)
            if self.lock is not None and self.lock.path is not None:
                self.lock.withdraw(timeout=min(2.0, self.session.session_timeout))
            if self.session is not None:
                self.session.close(timeout=2.0)
            self.guardian.done()
            if self.settings.get("metrics_dir") and self.metrics:
                # The lock is withdrawn and the session closed: only the metrics are left to lose, so a signal
                # ends the runner again rather than being ignored, should the write ever block (a hung disk).
                for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                    signal.signal(signum, signal.SIG_DFL)
                self._write_metrics()

    def _write_metrics(self):
        from . import _metrics

        try:
            _metrics.write(self.settings["metrics_dir"], self.name, **self.metrics)
        except Exception as exc:  # metrics must never change the job's outcome
            self.log("error", name=self.name, host=self.host, reason="could not write metrics: %s" % exc)

    def _locked(self, started):
        from ._zk import ZooRefused, ZooError, ZooUnavailable
        from ._lock import acl_problems, lock_path

        log, settings = self.log, self.settings
        try:
            self.session = _open_session(settings, log)
        except ZooUnavailable as exc:
            log("error", name=self.name, host=self.host, reason=str(exc))
            return EX_UNAVAILABLE
        except ZooRefused as exc:  # refused credentials
            log("error", name=self.name, host=self.host, reason=str(exc))
            return EX_CONFIG
        try:
            root = settings["root"]
            paths = [root, root + "/locks", lock_path(root, self.name)]
            if self.slot is not None:
                paths += [root + "/runs", "%s/runs/%s" % (root, self.name)]
            weak = acl_problems(self.session, paths, self.session.session_timeout)
            if weak:
                log("error", name=self.name, host=self.host, reason="the lock tree's ACLs are weaker than the "
                    "credentials ask for, so others could break the lock: %s; fix: zoo-locked acl --fix"
                    % "; ".join("%s (%s)" % p for p in weak))
                return EX_CONFIG
            return self._queue(started)
        except ZooRefused as exc:
            log("error", name=self.name, host=self.host, reason=str(exc))
            return EX_CONFIG
        except ZooError as exc:
            log("error", name=self.name, host=self.host, reason=str(exc))
            return EX_UNAVAILABLE

    def _queue(self, started):
        from ._zk import ZooError, ZooRefused
        from ._lock import Lock, LockHeld, LockLost, contender_data, describe_contender
        from kazoo.exceptions import ConnectionLoss, SessionExpiredError

        # kazoo's own failures that reach us when the connection breaks mid-call (the whole ensemble went
        # down): ZooKeeper is unavailable, like a ZooError.
        unavailable = (ZooError, ConnectionLoss, SessionExpiredError)

        def why(exc):
            return str(exc) or {ConnectionLoss: "the connection to ZooKeeper was lost",
                                SessionExpiredError: "the ZooKeeper session expired"}.get(type(exc), type(exc).__name__)

        options, log, settings = self.options, self.log, self.settings
        if self.slot is not None:
            from ._slots import Records

            self.records = Records(self.session, settings["root"], self.name)
            try:
                done = self._slot_done(self.records.read(self.slot)[0])
            except unavailable as exc:
                _auth_failures_are_config(exc)
                log("error", name=self.name, host=self.host, reason="while reading the run record: %s" % why(exc))
                return EX_UNAVAILABLE
            if done is not None:
                return done  # no need to queue for the lock: a finished slot stays finished
        owner = options.owner
        if owner is None:
            import pwd

            try:
                owner = pwd.getpwuid(os.geteuid()).pw_name
            except KeyError:
                owner = str(os.geteuid())
        # Readable by anyone who can reach ZooKeeper (world:anyone READ): never the command line, which may hold a
        # job's secrets (the crontab role puts its environment there). Only what the user chose to show.
        purpose = options.purpose if options.purpose is not None else ""
        extra = {"slot": self.slot} if self.slot is not None else {}
        # Told to stop (a forced release), or cut off and never told, COMMAND is dead within one session timeout:
        # a forced release waits that long for us before it deletes our node (docs/modules.md).
        extra["grace"] = self.session.session_timeout
        self.lock = Lock(self.session, settings["root"], self.name,
                         contender_data(owner, purpose, kind="run", **extra))

        def waiting(holder):
            log("waiting", name=self.name, host=self.host, holder=describe_contender(holder), wait=options.wait,
                slot=self.slot)

        # Made (and its imports done) before queueing, so that none of it delays the start of COMMAND once the
        # lock is ours: that is the hand-over gap between two holders.
        from ._supervisor import Supervisor

        self.supervisor = Supervisor(self)
        try:
            token = self.lock.acquire(options.wait, on_wait=waiting, follow_holder=False)
        except LockHeld as exc:
            log("skipped", name=self.name, host=self.host, holder=describe_contender(exc.holder),
                waited=time.monotonic() - started, slot=self.slot)
            return EX_TEMPFAIL
        except unavailable + (LockLost,) as exc:
            _auth_failures_are_config(exc)
            log("error", name=self.name, host=self.host, reason="while taking the lock: %s" % why(exc))
            return EX_UNAVAILABLE
        held_since = time.monotonic()
        supervisor = self.supervisor
        log("acquired", name=self.name, host=self.host, token=token, waited=held_since - started,
            session_timeout=self.session.session_timeout, slot=self.slot)
        if self.slot is not None:
            try:
                claimed = self._claim_slot(token, started)
            except unavailable as exc:
                log("error", name=self.name, host=self.host, reason="while writing the run record: %s" % why(exc))
                claimed = EX_CONFIG if isinstance(exc, ZooRefused) else EX_UNAVAILABLE
            if claimed is not None:
                self.lock.release(timeout=min(2.0, self.session.session_timeout))
                return claimed
        start_wall = time.time()
        code = supervisor.run(token)
        self.metrics = {"start": start_wall, "duration": time.time() - start_wall, "exit_code": code,
                        "success": code == 0}
        if self.slot is not None:
            self._finish_slot(code, supervisor.stopping)
        released = self.lock.release(timeout=min(2.0, self.session.session_timeout))
        log("released", name=self.name, host=self.host, token=token, held=time.monotonic() - held_since,
            exit=code, **({} if released else {"note": "the lock node was already gone or ZooKeeper did not answer"}))
        return code

    def _slot_done(self, record):
        """0 when the slot needs no run from us (logged), else None."""
        from ._slots import summary

        if record is None:
            return None
        state = record.get("state")
        if state == "running":
            return None  # running elsewhere, or its runner died: decided under the lock
        if state in ("failed", "stopped", "unreadable") and self.options.retry_failed:
            return None
        if state == "succeeded":
            self.metrics = {"slot_done": True}
            note = None
        elif state == "missed":
            note = "the slot was missed (started too late) and is not run"
        else:
            note = "not retried: the run %s; --retry-failed runs it again" % state
        self.log("done", name=self.name, host=self.host, slot=self.slot, record=summary(record), note=note)
        return 0

    def _claim_slot(self, token, started):
        """Under the lock: decide whether this runner runs the slot, and record it. None: run COMMAND."""
        from ._slots import clock, iso, new_attempt, new_record

        record, version = self.records.read(self.slot)
        done = self._slot_done(record)
        if done is not None:
            return done
        if record is None:
            record = new_record(self.name, self.slot, self.scheduled)
        elif record.get("state") == "running" and record.get("attempts"):
            # We hold the lock, so whoever was running this slot has lost it: its runner or node died.
            dead = record["attempts"][-1]
            dead["state"] = "died"
            self.log("failover", name=self.name, host=self.host, slot=self.slot,
                     previous="%s (token %s, started %s)" % (dead.get("host"), dead.get("token"), dead.get("start")))
        if self.max_delay is not None:
            late = clock() - self.scheduled if self.scheduled is not None else time.monotonic() - started
            if late > self.max_delay:
                record["state"] = "missed"
                record["missed"] = {"host": self.host, "token": token, "at": iso(time.time()), "late": round(late, 3)}
                self.records.write(self.slot, record, version, holder=self.lock.path)
                self.log("missed", name=self.name, host=self.host, slot=self.slot, late=late,
                         max_delay=self.max_delay)
                return 0
        record["state"] = "running"
        record.setdefault("attempts", []).append(new_attempt(token))
        self.record = record
        self.record_version = self.records.write(self.slot, record, version, holder=self.lock.path)
        if self.record_version is None:
            self.log("error", name=self.name, host=self.host, slot=self.slot,
                     reason="the run record changed while we held the lock; not running")
            return EX_UNAVAILABLE
        if version is None:
            self.records.prune(self.options.keep, current=self.slot)
        return None

    def _finish_slot(self, code, stopping):
        from ._zk import ZooError
        from ._slots import iso

        attempt = self.record["attempts"][-1]
        state = "stopped" if stopping else ("succeeded" if code == 0 else "failed")
        attempt.update(end=iso(time.time()), exit=code, state=state,
                       duration=round(time.time() - attempt.pop("started", time.time()), 3))
        self.record["state"] = state
        try:
            # Retried within the session (a blip must not make the slot run twice), and only while we hold the lock.
            if self.records.write(self.slot, self.record, self.record_version, holder=self.lock.path) is None:
                raise ZooError("it was changed by a later holder")
        except Exception as exc:
            self.log("error", name=self.name, host=self.host, slot=self.slot, exit=code,
                     reason="could not record the end of the run (%s): %s; the record still says running, so the "
                     "next holder of the lock will take this attempt for died and run the slot again"
                     % (state, str(exc) or type(exc).__name__))


def _ask(settings, log, work):
    """work(session) on a fresh session: (exit code or None, result). Errors are logged and mapped to codes."""
    from ._zk import ZooError, ZooRefused, ZooUnavailable

    try:
        session = _open_session(settings, log)
    except ZooUnavailable as exc:
        log("error", reason=str(exc))
        return EX_UNAVAILABLE, None
    except ZooRefused as exc:  # refused credentials
        log("error", reason=str(exc))
        return EX_CONFIG, None
    try:
        return None, work(session)
    except ZooRefused as exc:
        log("error", reason=str(exc))
        return EX_CONFIG, None
    except ZooError as exc:
        log("error", reason=str(exc))
        return EX_UNAVAILABLE, None
    finally:
        session.close(timeout=2.0)


def _write_json(document, sort_keys=False):
    """``document`` as JSON on stdout. ensure_ascii escapes every control character but DEL: that one too, so
    that no text read from ZooKeeper reaches a terminal raw (the JSON means the same)."""
    import json

    sys.stdout.write(json.dumps(document, indent=2, sort_keys=sort_keys).replace("\x7f", "\\u007f") + "\n")


def status(options, settings, log):
    from ._lock import status as lock_status

    code, locks = _ask(settings, log, lambda session: lock_status(
        session, settings["root"], options.names, session.session_timeout))
    if code is not None:
        return code
    if options.json:
        _write_json({"root": settings["root"], "locks": locks}, sort_keys=True)
        return 0
    if not locks:
        sys.stdout.write("no locks under %s\n" % settings["root"])
    for lock in locks:
        rows = ([("held", lock["holder"])] if lock["holder"] else [("free", None)]) + [("waiting", w) for w in lock["waiters"]]
        for state, who in rows:
            # Everything but the state comes from ZooKeeper, written by whoever made the node: escaped.
            if who is None:
                sys.stdout.write("%-30s %s\n" % (shown(lock["name"]), state))
            else:
                sys.stdout.write(
                    "%-30s %-8s host=%s pid=%s owner=%s since=%s token=%s purpose=%s\n"
                    % tuple([shown(lock["name"]), state] + [shown("-" if who.get(key) in (None, "") else who[key])
                                                            for key in ("host", "pid", "owner", "since", "token",
                                                                        "purpose")])
                )
    return 0


def history(options, settings, log):
    from ._slots import Records

    code, runs = _ask(settings, log, lambda session: Records(session, settings["root"], options.name).history(
        options.limit))
    if code is not None:
        return code
    if options.json:
        _write_json({"name": options.name, "runs": runs}, sort_keys=True)
        return 0
    if not runs:
        sys.stdout.write("no runs recorded for %s\n" % options.name)
    for run in runs:
        attempts = run.get("attempts") if isinstance(run.get("attempts"), list) else []
        last = attempts[-1] if attempts and isinstance(attempts[-1], dict) else {}
        # A run record is written by whoever could write it: every field is escaped.
        sys.stdout.write("%-18s %-10s host=%s duration=%s exit=%s token=%s attempts=%d\n" % tuple(
            [shown(run.get("slot")), shown(run.get("state"))]
            + [shown(last.get(key, "-")) for key in ("host", "duration", "exit", "token")] + [len(attempts)]))
    return 0


def acl(options, settings, log):
    from ._lock import acl_problems, fix_acls, tree_paths

    if not settings.get("auth"):
        log("error", reason="acl needs the cluster's credentials: set auth = digest:USER:PASSWORD (or "
            "sasl:USER:PASSWORD) in the config file, or ZOO_LOCKED_AUTH")
        return EX_CONFIG

    def check(session):
        paths = tree_paths(session, settings["root"], 60.0)
        if options.fix:
            log("fixed", root=settings["root"], nodes=len(fix_acls(session, paths, 60.0)))
        return paths, acl_problems(session, paths, 60.0)

    code, found = _ask(settings, log, check)
    if code is not None:
        return code
    paths, problems = found
    if options.json:
        _write_json({"root": settings["root"], "checked": len(paths),
                     "weak": [{"path": p, "problem": why} for p, why in problems]})
    else:
        for path, why in problems:
            # The ids in an ACL are whatever its author set.
            sys.stdout.write("%s: %s\n" % (printable(path), printable(why)))
        sys.stdout.write("%d nodes checked under %s, %d with weaker ACLs\n" % (len(paths), settings["root"], len(problems)))
    return 1 if problems else 0


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    try:
        options, command = parse(argv)
    except UsageError as exc:
        sys.stderr.write("zoo-locked: %s\n" % exc)
        return EX_USAGE
    except HelpShown:
        return 0
    log = Log(options.syslog)
    try:
        settings = _settings(options)
    except _config.ConfigError as exc:
        log("error", reason=str(exc))
        return EX_CONFIG
    settings["verbose"] = options.verbose
    if options.subcommand == "status":
        return status(options, settings, log)
    if options.subcommand == "history":
        return history(options, settings, log)
    if options.subcommand == "acl":
        return acl(options, settings, log)
    return Runner(options, command, settings, log).main()


def cli():
    """The console entry point: main(), then a quick exit.

    Everything has been released and closed by then; skipping the interpreter's teardown of kazoo's
    modules and daemon threads saves about 10 ms per run.
    """
    try:
        code = main()
        sys.stdout.flush()
        sys.stderr.flush()
    except BrokenPipeError:  # e.g. `zoo-locked status | head`
        os._exit(141)
    except KeyboardInterrupt:
        os._exit(130)
    except Exception as exc:  # a bug: one clear line, not a traceback (--verbose shows it)
        if "--verbose" in sys.argv:
            import traceback

            traceback.print_exc()
        try:
            sys.stderr.write("zoo-locked: internal error: %s: %s (please report it)\n" % (type(exc).__name__, exc))
            sys.stderr.flush()
        except (IOError, OSError):
            pass
        os._exit(1)
    os._exit(code if 0 <= code <= 255 else 1)


if __name__ == "__main__":
    cli()
