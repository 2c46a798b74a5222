# -*- coding: utf-8 -*-
# Copyright: zoo-locked maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Locks held from playbooks: the detached holder process, and what the lock and lock_info modules do.

A ZooKeeper lock is an ephemeral node and lives as long as the session that made it, but a module process
ends with its task. ``state=acquired`` therefore forks a small detached holder (double fork, new session,
stdio on /dev/null) that opens its own session, queues with the one lock protocol of ``_lock``, reports
the outcome to the module through a pipe as one JSON line, and then keeps the session until

- its lease ends (it withdraws its node and closes the session),
- its node is deleted: ``state=released`` deletes the contender of its owner, from any host, and the
  holder's ``Guard`` sees the node gone,
- its node is revoked: ``state=released force=true`` by another owner marks the node's data ``revoked``; the
  holder's ``Guard`` reads the mark at its next heartbeat, and the holder withdraws its node at once (the
  releasing module waits for that, at most the ``grace`` the node carries, before it deletes the node itself),
- its session is lost (expired, or the node deleted by anyone),
- it is sent SIGTERM or SIGINT (it withdraws its node), or
- with the default owner and the holder on the controller, the ``ansible-playbook`` run it belongs to has
  ended (for instance killed): nobody is left who could release it.

The fork happens before kazoo starts any thread in the module process, and the holder imports nothing
after it: Ansible deletes the module's payload (a zip holding this file) when the module exits, so
everything the holder runs is imported at the top of this file. No Ansible code is imported here.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import errno
import getpass
import json
import os
import re
import select
import signal
import socket
import threading
import time

from . import _config
from ._common import check_name, check_seconds, check_text, check_tls_files, connection_settings
from ._lock import (
    Guard,
    Lock,
    LockHeld,
    LockLost,
    acl_problems,
    contender_data,
    contender_grace,
    delete_contender,
    describe_contender,
    lock_path,
    owned_by,
    read_contenders,
    revoke_contender,
    rewrite_contender,
    status,
    wait_contender_gone,
)
from ._slots import Records
from ._zk import Session, ZooError, quiet_kazoo, tls_options

try:
    from kazoo.exceptions import BadVersionError, KazooException
except ImportError:  # the modules report a missing kazoo before they get here
    KazooException = BadVersionError = ZooError

try:
    import syslog
except ImportError:  # pragma: no cover - not on POSIX
    syslog = None

# The owner the lock action plugin sets by default: PROGRAM:USER@CONTROLLER:PID of the ansible-playbook run.
RUN_OWNER = re.compile(r"\A[A-Za-z0-9_.-]+:[^@\s]*@[^:\s]+:([0-9]+)\Z")
ZOO_ERRORS = (ZooError, KazooException)
REPORT_MARGIN = 5.0  # seconds the module waits for the holder beyond what the holder may take
# A forced release waits for the revoked holder to let go for its grace, plus a tenth of it (the holder's
# heartbeat: it reads the mark at its next one) and REVOKE_MARGIN seconds (its release), then breaks the lock.
REVOKE_HEARTBEAT_SHARE = 0.1
REVOKE_MARGIN = 1.0
WATCH_INTERVAL = 1.0  # how often the holder looks at the ansible-playbook process it belongs to


class TaskError(Exception):
    """The task fails; ``result`` holds extra return values (the holder of a busy lock)."""

    def __init__(self, msg, **result):
        Exception.__init__(self, msg)
        self.result = result


def iso_utc(epoch):
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def _settings(params):
    try:
        settings = connection_settings(params)
        check_tls_files(settings)
    except _config.ConfigError as exc:
        raise TaskError(str(exc))
    return settings


def _open(settings):
    quiet_kazoo()
    session = Session(settings["hosts"], settings["session_timeout"], settings["connect_timeout"],
                      auth=settings["auth"], tls=tls_options(settings))
    try:
        session.start()
    except ZooError as exc:
        raise TaskError(str(exc))
    except KazooException as exc:
        session.close(timeout=1.0)
        raise TaskError(_describe(exc, settings))
    return session


def _describe(exc, settings):
    """A message for an error of kazoo's own (the bounded calls raise ZooError, which says what it is)."""
    if isinstance(exc, ZooError):
        return str(exc)
    if type(exc).__name__ == "AuthFailedError":  # credentials, or a scheme the servers do not know
        return "ZooKeeper %s refused the authentication (option auth)" % settings["hosts"]
    return "ZooKeeper %s: %s %s" % (settings["hosts"], type(exc).__name__, exc)


def _contenders(session, settings, name):
    try:
        return read_contenders(session, lock_path(settings["root"], name), session.session_timeout)
    except ZOO_ERRORS as exc:
        raise TaskError("reading the lock %s: %s" % (name, _describe(exc, settings)))


# --- lock_info --------------------------------------------------------------------------------------------


def lock_info(params):
    """{"root": ..., "locks": [...]} for the named locks, or for all locks under the root."""
    try:
        names = [check_name(n, "names") for n in params.get("names") or []]
    except _config.ConfigError as exc:
        raise TaskError(str(exc))
    runs = params.get("runs") or 0
    if runs < 0:
        raise TaskError("option runs: must be 0 or more, got %d" % runs)
    settings = _settings(params)
    session = _open(settings)
    try:
        locks = status(session, settings["root"], names, session.session_timeout)
        for lock in locks:
            lock["runs"] = Records(session, settings["root"], lock["name"]).history(runs) if runs else []
    except ZOO_ERRORS as exc:
        raise TaskError("reading the locks under %s: %s" % (settings["root"], _describe(exc, settings)))
    finally:
        session.close()
    for lock in locks:
        holder = lock["holder"] or {}
        lock["held"] = bool(holder)
        for key in ("owner", "token", "since", "purpose", "expires_at"):
            lock[key] = holder.get(key)
    return {"root": settings["root"], "locks": locks}


# --- lock -------------------------------------------------------------------------------------------------


def lock_task(params, check_mode):
    """Do (or, in check mode, predict) what the lock module is asked; returns the result with ``warnings``."""
    state = params["state"]
    try:
        name = check_name(params["name"])
        wait = check_seconds(params["wait"], "wait")
        lease = check_seconds(params["lease"], "lease", positive=True)
        owner = check_text(params.get("owner") or _fallback_owner(), "owner")
        purpose = check_text(params.get("purpose") or "", "purpose", one_line=False)
    except _config.ConfigError as exc:
        raise TaskError(str(exc))
    if params.get("force") and state != "released":
        raise TaskError("option force: applies only to state=released (to break a lock held by someone else)")
    settings = _settings(params)
    job = {
        "settings": settings,
        "name": name,
        "owner": owner,
        "purpose": purpose,
        "wait": wait,
        "lease": lease,
    }
    result = {"name": name, "owner": owner, "token": None, "holder": None, "expires_at": None, "warnings": []}
    if state == "released":
        result.update(_release(job, params.get("force"), check_mode))
    elif check_mode:
        result.update(_predict_acquire(job))
    else:
        result.update(_acquire(job))
    return result


def _fallback_owner():
    """The owner when none is given and the action plugin did not set one (the module run on its own)."""
    try:
        user = getpass.getuser()
    except Exception:
        user = str(os.getuid())
    return "%s@%s" % (user, socket.gethostname())


def _held_result(contender, changed):
    info = contender.as_dict()
    return {"changed": changed, "token": info["token"], "holder": info, "expires_at": info.get("expires_at")}


def _predict_acquire(job):
    settings = job["settings"]
    session = _open(settings)
    try:
        contenders = _contenders(session, settings, job["name"])
    finally:
        session.close()
    mine = owned_by(contenders, job["owner"])
    if contenders and contenders[0] in mine:
        return _held_result(contenders[0], False)
    result = {"changed": True, "msg": "would acquire the lock %s" % job["name"]}
    if contenders:
        holder = contenders[0].as_dict()
        result.update(holder=holder, token=holder["token"], expires_at=holder.get("expires_at"))
        result["warnings"] = [
            "check mode: the lock %s is held by %s; a real run would wait up to %gs for it"
            % (job["name"], describe_contender(contenders[0]), job["wait"])
        ]
    return result


def _release(job, force, check_mode):
    """Release this owner's contenders; with force, also revoke (and if need be break) someone else's hold.

    The result has ``how``: ``released`` (this owner's lock), ``revoked`` (the holder was told and let go
    within its grace), ``broken`` (it still held the lock after its grace: its node was deleted), ``gone`` (it
    let go by itself before it could be told), or None (nothing done); ``revoked`` (someone else's hold was
    taken away) and ``waited`` (seconds spent waiting for the revoked holder).
    """
    settings, name, owner = job["settings"], job["name"], job["owner"]
    session = _open(settings)
    outcome = {"how": None, "revoked": False, "waited": 0.0}
    try:
        contenders = _contenders(session, settings, name)
        mine = owned_by(contenders, owner)
        head = contenders[0] if contenders else None
        forced = head if force and head is not None and head not in mine else None
        grace = session.session_timeout  # for a holder that names none (a foreign kazoo Lock)
        if forced is not None:
            grace = _grace(forced.data, grace)
        if check_mode:
            released = mine
            if forced is not None:
                outcome.update(how="revoked", revoked=True)
        else:
            released = []
            try:
                # Our own places first: a place of ours behind the revoked holder must not get the lock meanwhile.
                for contender in mine:
                    if delete_contender(session, settings["root"], name, contender.node, session.session_timeout):
                        released.append(contender)
                if forced is not None:
                    outcome.update(_revoke(session, settings["root"], name, owner, forced, grace))
            except ZOO_ERRORS as exc:
                raise TaskError("releasing the lock %s: %s" % (name, _describe(exc, settings)))
    finally:
        session.close()

    warnings = []
    if head is not None and head not in mine and forced is None:
        warnings.append(
            "the lock %s is held by %s, not by %s: it stays held until its holder lets go%s; force=true breaks it "
            "(its holder is told to stop, and its node deleted if it has not let go within its grace)"
            % (name, describe_contender(head), owner, " or its lease ends" if head.data.get("expires_at") else ""))
    if forced is not None and outcome["how"] != "gone":
        result = _held_result(forced, True)
        described = describe_contender(forced)
        if forced.data.get("identifier"):  # a foreign kazoo Lock: its identifier is all it tells
            described += " identified as %s" % json.dumps(forced.data["identifier"])
        if check_mode:
            result["msg"] = ("would revoke the lock %s held by %s, and wait up to %gs for it to let go before breaking "
                             "it" % (name, described, _revoke_limit(grace)))
            warnings.append("would revoke the lock %s held by %s" % (name, described))
        elif outcome["how"] == "revoked":
            result["msg"] = "revoked the lock %s held by %s: it let go after %.1fs" % (
                name, described, outcome["waited"])
            warnings.append("revoked the lock %s held by %s (force=true); it let go after %.1fs"
                            % (name, described, outcome["waited"]))
        else:
            told = ("it still held it %.1fs after it was told to stop (grace %gs)" % (outcome["waited"], grace)
                    if outcome["marked"] else
                    "it cannot be told to stop (its data is not zoo-locked's), and it still held it %.1fs later"
                    % outcome["waited"])
            result["msg"] = "broke the lock %s held by %s: %s, so its node was deleted" % (name, described, told)
            warnings.append("broke the lock %s held by %s: %s; if it is still at work, it now works without the "
                            "lock" % (name, described, told))
    elif released:
        result = _held_result(released[0], True)
        result["msg"] = "%s the lock %s" % ("would release" if check_mode else "released", name)
        outcome["how"] = "released"
        if forced is not None:  # gone by itself meanwhile
            result["msg"] += "; %s let go by itself before it could be revoked" % describe_contender(forced)
    elif forced is not None:  # gone by itself before we could tell it
        result = {"changed": False, "msg": "the lock %s is not held by %s any more: it let go by itself before it "
                                           "could be revoked" % (name, describe_contender(forced))}
    else:
        held = " (held by %s)" % describe_contender(head) if head is not None else ""
        result = {"changed": False, "msg": "the lock %s is not held by %s%s" % (name, owner, held)}
    outcome.pop("marked", None)
    result.update(outcome)
    result["waited"] = round(result["waited"], 3)
    result["warnings"] = warnings
    return result


def _grace(data, fallback):
    """Seconds a revoked holder has to let go: the grace its data names (at most the longest session timeout),
    else ``fallback`` (our own session timeout)."""
    grace = contender_grace(data)
    if grace is None:
        return fallback
    return min(grace, _config.TIMEOUT_BOUNDS["session_timeout"][1])


def _revoke_limit(grace):
    return grace + REVOKE_HEARTBEAT_SHARE * grace + REVOKE_MARGIN


def _revoke(session, root, name, owner, contender, grace):
    """Tell the holder to stop, wait for it to let go (at most its grace and a margin), else delete its node."""
    data = revoke_contender(session, root, name, contender.node, owner, session.session_timeout)
    if data is None:
        return {"how": "gone"}
    started = time.monotonic()
    marked = "revoked" in data
    if wait_contender_gone(session, root, name, contender.node, _revoke_limit(grace)):
        return {"how": "revoked", "revoked": True, "waited": time.monotonic() - started, "marked": marked}
    deleted = delete_contender(session, root, name, contender.node, session.session_timeout)
    return {"how": "broken" if deleted else "revoked", "revoked": True, "waited": time.monotonic() - started,
            "marked": marked}


def _acquire(job):
    job = dict(job, watch=_run_to_watch(job["owner"]), log=os.environ.get("ZOO_LOCKED_HOLD_LOG"))
    settings = job["settings"]
    # The holder may take: connecting, a few bounded calls, the wait itself.
    patience = settings["connect_timeout"] + job["wait"] + 4 * settings["session_timeout"] + REPORT_MARGIN
    report = spawn_holder(job, patience)
    if report.get("ok"):
        return dict((k, report[k]) for k in ("changed", "token", "holder", "expires_at", "msg") if k in report)
    raise TaskError(report.get("error") or "the lock holder failed", holder=report.get("holder"))


# --- which ansible-playbook run a default owner names ------------------------------------------------------


def _proc_stat(pid):
    """(state, ppid, starttime) of a process from /proc, or None."""
    try:
        with open("/proc/%d/stat" % pid, "rb") as handle:
            data = handle.read()
    except (IOError, OSError):
        return None
    fields = data[data.rindex(b")") + 2:].split()
    try:
        return fields[0].decode("ascii", "replace"), int(fields[1]), int(fields[19])
    except (IndexError, ValueError):
        return None


def _run_to_watch(owner):
    """(pid, starttime) of the ansible-playbook process the owner names when it is an ancestor of this one.

    Only an ancestor counts: then the holder is on the controller, in its process namespace, and the pid
    is surely that run. Elsewhere (a remote host, an explicit owner) the lease is the only limit.
    """
    match = RUN_OWNER.match(owner)
    if not match:
        return None
    wanted = int(match.group(1))
    pid = os.getppid()
    for _hop in range(64):
        if pid <= 1:
            return None
        stat = _proc_stat(pid)
        if stat is None:
            return None
        if pid == wanted:
            return (pid, stat[2])
        pid = stat[1]
    return None


def _run_alive(watch):
    stat = _proc_stat(watch[0])
    return stat is not None and stat[2] == watch[1] and stat[0] not in ("Z", "X")


# --- the detached holder ----------------------------------------------------------------------------------


def spawn_holder(job, patience):
    """Fork the detached holder for ``job`` and return its report (a dict with ``ok``).

    Must be called before this process starts any kazoo thread: a forked copy of a running kazoo client
    is not usable.
    """
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:  # the intermediate process: a new session, then the holder, then gone
        code = 1
        try:
            os.close(read_end)
            os.setsid()
            if os.fork() == 0:
                code = _holder(write_end, job)
            else:
                code = 0
        except BaseException:
            pass
        os._exit(code)
    os.close(write_end)
    try:
        os.waitpid(child, 0)
        return _read_report(read_end, patience)
    finally:
        os.close(read_end)


def _read_report(fd, patience):
    deadline = time.monotonic() + patience
    data = b""
    holder_pid = None
    while True:
        lines = data.split(b"\n")
        for line in lines[:-1]:
            try:
                message = json.loads(line.decode("utf-8"))
            except ValueError:
                continue
            if "pid" in message and "ok" not in message:
                holder_pid = message["pid"]
            elif "ok" in message:
                return message
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            if holder_pid:
                try:
                    os.kill(holder_pid, signal.SIGTERM)  # it withdraws its contender node
                except OSError:
                    pass
            return {"ok": False, "error": "the lock holder did not report within %.0fs (stopped it)" % patience}
        try:
            ready = select.select([fd], [], [], remaining)[0]
        except (IOError, OSError) as exc:  # EINTR before Python 3.5 only
            if getattr(exc, "errno", None) == errno.EINTR:
                continue
            raise
        if ready:
            chunk = os.read(fd, 65536)
            if not chunk:
                return {"ok": False, "error": "the lock holder ended without a report (see syslog)"}
            data += chunk


class _Interrupted(Exception):
    pass


class _SameOwner(Exception):
    def __init__(self, holder):
        Exception.__init__(self, "held by the same owner")
        self.holder = holder


def _detach(keep):
    """stdio on /dev/null, no other inherited descriptors, cwd /: nothing of the task stays open."""
    os.chdir("/")
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    try:
        fds = [int(fd) for fd in os.listdir("/proc/self/fd")]
    except (IOError, OSError, ValueError):
        fds = range(3, 4096)
    for fd in fds:
        if fd > 2 and fd != keep:
            try:
                os.close(fd)
            except OSError:
                pass


def _log(job, event, **fields):
    """One line per event to syslog (ident zoo-locked-hold), and to the file ZOO_LOCKED_HOLD_LOG if set."""
    fields.update(name=job["name"], owner=job["owner"])
    line = " ".join([event] + ["%s=%s" % (k, json.dumps(v) if isinstance(v, str) else v)
                               for k, v in sorted(fields.items())])
    if syslog is not None:
        try:
            syslog.openlog("zoo-locked-hold", syslog.LOG_PID, syslog.LOG_USER)
            syslog.syslog(syslog.LOG_INFO if event in ("acquired", "ended") else syslog.LOG_WARNING, line)
        except Exception:
            pass
    if job.get("log"):
        try:
            with open(job["log"], "a") as handle:
                handle.write("%s pid=%d %s\n" % (iso_utc(time.time()), os.getpid(), line))
        except (IOError, OSError):
            pass


class _Report:
    """The pipe to the module: JSON lines, then closed (its descriptor number may be reused afterwards)."""

    def __init__(self, fd):
        self.fd = fd

    def send(self, message):
        if self.fd is None:
            raise OSError(errno.EPIPE, "the report is closed")
        os.write(self.fd, (json.dumps(message) + "\n").encode("utf-8"))

    def try_send(self, message):
        try:
            self.send(message)
        except OSError:
            pass

    def close(self):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def _holder(out, job):
    """The holder's life; returns its exit code. Nothing is imported from here on."""
    state = {"holding": False, "stop": None}
    wake = threading.Event()

    def on_signal(signum, frame):
        if not state["holding"]:
            raise _Interrupted("interrupted by signal %d" % signum)
        state["stop"] = "signal %d" % signum
        wake.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, on_signal)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    _detach(out)
    report = _Report(out)
    session = None
    try:
        report.send({"pid": os.getpid()})
        session = _open(job["settings"])
        return _hold(session, job, report, state, wake)
    except (TaskError, LockLost, _Interrupted) as exc:
        error = str(exc)
    except ZOO_ERRORS as exc:
        error = _describe(exc, job["settings"])
    except Exception as exc:
        error = "the lock holder failed: %s: %s" % (type(exc).__name__, exc)
    finally:
        if session is not None:
            session.close()
    _log(job, "error", reason=error)
    report.try_send({"ok": False, "error": error})
    return 1


def _hold(session, job, report, state, wake):
    settings, name, owner, lease = job["settings"], job["name"], job["owner"], job["lease"]
    root = settings["root"]
    weak = acl_problems(session, [root, root + "/locks", lock_path(root, name)], session.session_timeout)
    if weak:  # as the runner: with credentials, a lock that anyone could delete is no lock
        raise TaskError(
            "the lock tree's ACLs are weaker than the credentials ask for, so others could break the lock: %s; "
            "fix: zoo-locked acl --fix" % "; ".join("%s (%s)" % problem for problem in weak))
    contenders = _contenders(session, settings, name)
    mine = owned_by(contenders, owner)
    if contenders and contenders[0] in mine:
        report.send(dict(_held_result(contenders[0], False), ok=True))
        return 0

    def is_mine(contender):
        return contender is not None and owned_by([contender], owner) == [contender]

    def on_wait(holder):
        if is_mine(holder):  # the same run acquiring from another host at the same moment
            raise _SameOwner(holder)

    queued = time.time()
    # grace: once revoked (a forced release), this holder lets go within its session timeout even if it never
    # hears of it (its session expires), and at its next heartbeat if it does.
    data = contender_data(owner, job["purpose"], kind="hold", expires_at=iso_utc(queued + lease), lease=lease,
                          grace=session.session_timeout)
    lock = Lock(session, settings["root"], name, data)
    try:
        token = lock.acquire(job["wait"], on_wait=on_wait)
    except _SameOwner as exc:
        report.send(dict(_held_result(exc.holder, False), ok=True))
        return 0
    except LockHeld as exc:
        if is_mine(exc.holder):
            report.send(dict(_held_result(exc.holder, False), ok=True))
            return 0
        report.send({
            "ok": False,
            "error": "the lock %s is still held after waiting %gs: held by %s"
            % (name, job["wait"], describe_contender(exc.holder)),
            "holder": exc.holder.as_dict() if exc.holder is not None else None,
        })
        return 1
    held = time.time()
    lease_end = time.monotonic() + lease
    if held - queued >= 1.0:  # the lease runs from the moment the lock is held
        data["expires_at"] = iso_utc(held + lease)
        try:
            rewrite_contender(lock, data, lock.op_timeout, version=0)  # as created: never over a "revoked" mark
        except BadVersionError:
            lock.withdraw()
            raise LockLost("the lock %s was revoked (a forced release) as soon as it was held" % name)
    state["holding"] = True
    ours = [c for c in _contenders(session, settings, name) if c.node == lock.node]
    if not ours:
        raise LockLost("the lock %s was released while it was being reported" % name)
    try:
        report.send(dict(_held_result(ours[0], True), ok=True))
    except OSError:  # the module is gone: nobody knows this lock is held, so it is not
        lock.withdraw()
        _log(job, "abandoned", token=token, reason="the module did not take the report")
        return 1
    report.close()
    _log(job, "acquired", token=token, lease=lease, watch=(job.get("watch") or [None])[0])
    _keep(lock, job.get("watch"), lease_end, state, wake)
    if lock.path is not None:
        lock.withdraw()
    _log(job, "ended", token=token, reason=state["stop"])
    return 0


def _keep(lock, watch, lease_end, state, wake):
    """Keep the session until there is a reason to stop, which goes to state["stop"]."""
    guard = Guard(lock, wake.set)
    guard.start()
    try:
        while True:
            if guard.lost.is_set():
                state["stop"] = guard.reason
                if (guard.reason or "").startswith("revoked"):
                    return  # a forced release: the node is still there, and goes at once (the caller withdraws it)
                if "deleted" in (guard.reason or ""):
                    state["stop"] = "released: its lock node was deleted (a state=released task, or broken)"
                lock.path = None  # the node is gone (released, broken or expired): nothing to withdraw
                return
            if state["stop"]:
                return
            now = time.monotonic()
            if now >= lease_end:
                state["stop"] = "the lease ended"
                return
            if watch is not None and not _run_alive(watch):
                state["stop"] = "the ansible-playbook run (pid %d) ended" % watch[0]
                return
            wake.wait(min(WATCH_INTERVAL, lease_end - now))
            wake.clear()
    finally:
        guard.stop()
