# -*- coding: utf-8 -*-
# Copyright: zoo-locked maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The zoo-locked lock protocol: the one implementation used by the runner and the modules.

Layout (docs/architecture.md describes it for other tools)::

    ROOT/locks/NAME                              persistent, one per lock name
    ROOT/locks/NAME/<uuid4-hex>__lock__<seq>     ephemeral sequential, one per contender

Contender names follow kazoo's Lock recipe, so kazoo's ``Lock(client, ROOT/locks/NAME).contenders()`` reads
them and a kazoo Lock on the same path queues fairly with zoo-locked. The contender with the lowest
sequence number holds the lock; each waiter watches its predecessor (and the holder, when it wants to hear
of every new holder). A contender's data is a small
JSON document (host, pid, owner, purpose, started, kind). The fencing token of a holder is its contender
node's czxid: ZooKeeper's transaction ids grow strictly across the whole ensemble, so the token grows with
every new holder even if the lock's parent node is removed and made again.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
import os
import socket
import threading
import time
import uuid

from ._clock import now
from ._config import HEARTBEAT_SHARE
from ._zk import ZooError

try:
    from kazoo.exceptions import BadVersionError, ConnectionLoss, NoNodeError, SessionExpiredError
    from kazoo.protocol.states import KazooState
except ImportError:  # reported by the caller through _zk.HAS_KAZOO
    pass

NODE_MARK = "__lock__"
FORMAT_VERSION = 1


class LockHeld(Exception):
    """The lock is held by someone else and the wait ran out."""

    def __init__(self, name, holder):
        self.name = name
        self.holder = holder
        Exception.__init__(self, "lock %s is held by %s" % (name, describe_contender(holder)))


class LockLost(Exception):
    """The lock was held and is not any more (session expired, node deleted)."""


def lock_path(root, name):
    return "%s/locks/%s" % (root, name)


def sequence(node):
    """The sequence number of a contender node name, or None for a node that is not a contender."""
    at = node.rfind(NODE_MARK)
    if at < 0:
        return None
    try:
        return int(node[at + len(NODE_MARK):])
    except ValueError:
        return None


def utc_now():
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def contender_data(owner, purpose, kind="run", **extra):
    """The JSON document a contender node carries."""
    data = {
        "v": FORMAT_VERSION,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "owner": owner,
        "purpose": purpose,
        "started": utc_now(),
        "kind": kind,
    }
    data.update(extra)
    return data


class Contender:
    """One node in a lock's queue, as read back from ZooKeeper."""

    def __init__(self, node, data, stat):
        self.node = node
        self.seq = sequence(node)
        self.token = stat.czxid if stat is not None else None
        self.since = stat.ctime / 1000.0 if stat is not None else None
        try:
            parsed = json.loads(data.decode("utf-8")) if data else {}
        except ValueError:
            parsed = None
        if not isinstance(parsed, dict):
            # A kazoo Lock stores a free-form identifier: show it rather than fail.
            parsed = {"identifier": data.decode("utf-8", "replace") if data else ""}
        self.data = parsed

    def as_dict(self):
        info = {
            "host": self.data.get("host"),
            "pid": self.data.get("pid"),
            "owner": self.data.get("owner"),
            "purpose": self.data.get("purpose"),
            "kind": self.data.get("kind"),
            "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.since)) if self.since else None,
            "token": self.token,
            "node": self.node,
        }
        for key in ("expires_at", "identifier"):
            if key in self.data:
                info[key] = self.data[key]
        return info


def describe_contender(contender):
    if contender is None:
        return "an unknown holder (it went away while we looked)"
    d = contender.as_dict()
    return "%s (host %s, pid %s, purpose %s, since %s, token %s)" % (
        d.get("owner") or "?",
        d.get("host") or "?",
        d.get("pid") or "?",
        d.get("purpose") or "-",
        d.get("since") or "?",
        d.get("token"),
    )


def read_contenders(session, path, timeout):
    """The contenders of a lock, holder first; [] when the lock node does not exist."""
    deadline = time.monotonic() + timeout
    client = session.client
    try:
        children = session.call("listing %s" % path, client.get_children_async(path), deadline - time.monotonic())
    except NoNodeError:
        return []
    nodes = sorted((c for c in children if sequence(c) is not None), key=sequence)
    pending = [(node, client.get_async("%s/%s" % (path, node))) for node in nodes]
    result = []
    for node, answer in pending:
        try:
            data, stat = session.call("reading %s/%s" % (path, node), answer, deadline - time.monotonic())
        except NoNodeError:
            continue  # it left between the listing and the read
        result.append(Contender(node, data, stat))
    return result


def list_lock_names(session, root, timeout):
    try:
        children = session.call("listing %s/locks" % root, session.client.get_children_async(root + "/locks"), timeout)
    except NoNodeError:
        return []
    return sorted(children)


def status(session, root, names, timeout):
    """Holder and waiters of the named locks (all locks under the root when names is empty)."""
    deadline = time.monotonic() + timeout
    names = list(names) or list_lock_names(session, root, timeout)
    locks = []
    for name in names:
        contenders = read_contenders(session, lock_path(root, name), deadline - time.monotonic())
        locks.append(
            {
                "name": name,
                "holder": contenders[0].as_dict() if contenders else None,
                "waiters": [c.as_dict() for c in contenders[1:]],
            }
        )
    return locks


def acl_problems(session, paths, timeout):
    """[(path, problem)] for nodes among ``paths`` whose ACL is weaker than the session's credentials ask for.

    With credentials, only the cluster's identity may create, change or delete in the lock tree; anyone may
    at most read. Paths that do not exist are fine: they will be created with the right ACL. ZooKeeper does
    not show digest hashes when it lists ACLs, so a digest identity is matched by user name.
    """
    if session.acl is None:
        return []
    scheme, user = session.identity
    deadline = time.monotonic() + timeout
    pending = [(path, session.client.get_acls_async(path)) for path in paths]
    problems = []
    for path, answer in pending:
        try:
            acls, dummy_stat = session.call("reading the ACL of %s" % path, answer, deadline - time.monotonic())
        except NoNodeError:
            continue
        weak = []
        ours = 0
        for acl in acls:
            acl_user = acl.id.id.partition(":")[0] if acl.id.scheme == "digest" else acl.id.id
            if acl.id.scheme == scheme and acl_user == user:
                ours |= acl.perms
            elif acl.perms & ~1:  # anything beyond READ
                weak.append("%s:%s may %s" % (acl.id.scheme, acl.id.id, "|".join(acl.acl_list)))
        if ours != 31:
            weak.append("%s:%s lacks ALL" % (scheme, user))
        if weak:
            problems.append((path, "; ".join(weak)))
    return problems


def tree_paths(session, root, timeout):
    """Every node of the lock tree below (and including) ROOT: locks, contenders, run records."""
    deadline = time.monotonic() + timeout
    paths = [root]
    level = [root]
    while level and len(paths) < 100000:
        answers = [(path, session.client.get_children_async(path)) for path in level]
        level = []
        for path, answer in answers:
            try:
                children = session.call("listing %s" % path, answer, deadline - time.monotonic())
            except NoNodeError:
                continue
            level.extend("%s/%s" % (path, child) for child in children)
        paths.extend(level)
    return paths


def fix_acls(session, paths, timeout):
    """Set the lock tree's ACL on ``paths``; returns the paths changed."""
    deadline = time.monotonic() + timeout
    fixed = []
    for path in paths:
        try:
            session.call("setting the ACL of %s" % path, session.client.set_acls_async(path, session.acl),
                         deadline - time.monotonic())
            fixed.append(path)
        except NoNodeError:
            pass
    return fixed


class Lock:
    """One attempt to hold a lock, from a connected Session.

    ``acquire`` either returns with the lock held (``token``, ``path`` set) or raises LockHeld (the wait
    ran out; our contender node has been withdrawn), LockLost or ZooError. ``release`` deletes the
    contender node. Nothing here retries forever: every call is bounded by the wait or the op timeout.
    """

    def __init__(self, session, root, name, data):
        self.session = session
        self.name = name
        self.dir = lock_path(root, name)
        self.data = json.dumps(data, sort_keys=True).encode("utf-8")
        self.prefix = uuid.uuid4().hex + NODE_MARK
        self.node = None
        self.path = None
        self.token = None
        self.last_ok = None  # monotonic send time of the last request the server answered

    @property
    def op_timeout(self):
        # No answer within a session timeout means the session is as good as gone.
        return self.session.session_timeout

    def _create(self):
        client = self.session.client
        deadline = time.monotonic() + self.op_timeout
        while True:
            try:
                path, stat = self.session.call(
                    "creating a contender under %s" % self.dir,
                    client.create_async(
                        self.dir + "/" + self.prefix,
                        self.data,
                        ephemeral=True,
                        sequence=True,
                        makepath=True,
                        include_data=True,
                    ),
                    deadline - time.monotonic(),
                )
                return path, stat
            except ConnectionLoss:
                # The create may have gone through before the connection dropped: look for our node.
                if time.monotonic() >= deadline:
                    raise ZooError("lost the connection to ZooKeeper while queueing for %s" % self.name)
                found = self._find_own(deadline)
                if found:
                    return found

    def _list_through_leader(self, timeout=None):
        """The lock's children as the leader has them: a sync, then the listing (pipelined, one round trip).

        A follower cut off from the leader still answers reads from its own, stale copy; a sync is answered only
        through the leader, so what follows it is the leader's state, and our session was alive there then.
        """
        client = self.session.client
        synced = client.sync_async(self.dir)
        listed = client.get_children_async(self.dir)
        timeout = self.op_timeout if timeout is None else timeout
        started = now()
        self.session.call("syncing %s with the leader" % self.dir, synced, timeout)
        return self.session.call("listing %s" % self.dir, listed, timeout - (now() - started))

    def _find_own(self, deadline):
        client = self.session.client
        while time.monotonic() < deadline:
            try:
                # After a ConnectionLoss, only the leader's state tells whether our create went through: a
                # stale follower could hide it, and we would queue a second contender of our own.
                children = self._list_through_leader(deadline - time.monotonic())
            except ConnectionLoss:
                time.sleep(0.05)
                continue
            except NoNodeError:
                return None
            for child in children:
                if child.startswith(self.prefix):
                    path = self.dir + "/" + child
                    stat = self.session.call("reading %s" % path, client.exists_async(path), deadline - time.monotonic())
                    return (path, stat) if stat else None
            return None
        raise ZooError("lost the connection to ZooKeeper while queueing for %s" % self.name)

    def acquire(self, wait, on_wait=None, follow_holder=None):
        """Queue for the lock and return once held; give up after ``wait`` seconds (0: do not wait).

        ``on_wait(holder)`` (a Contender) is called when we start to wait and again each time the holder changes
        while we wait; it may raise to give up (our node is then withdrawn). With ``follow_holder`` (default:
        when there is an ``on_wait``) a waiter watches the holder as well as its predecessor, so that it hears of
        a new holder at once even when its predecessor stays; without it, each waiter watches only its
        predecessor (no herd effect when a holder leaves), and ``on_wait`` hears of a new holder only when the
        predecessor goes.
        """
        client = self.session.client
        deadline = time.monotonic() + wait
        if follow_holder is None:
            follow_holder = on_wait is not None
        self.path, stat = self._create()
        self.node = self.path.rsplit("/", 1)[1]
        self.token = stat.czxid
        wake = threading.Event()

        def on_state(state):
            wake.set()

        def on_change(event):  # one callable for every watch: kazoo keeps a set of them per path
            wake.set()

        client.add_listener(on_state)
        told = None  # the holder's node that on_wait last heard of
        try:
            while True:
                wake.clear()
                sent = now()
                children = self._list_through_leader()
                queue = sorted((c for c in children if sequence(c) is not None), key=sequence)
                if self.node not in queue:
                    raise LockLost("our contender node %s disappeared while queueing" % self.path)
                at = queue.index(self.node)
                if at == 0:
                    self.last_ok = sent
                    return self.token
                if time.monotonic() >= deadline:
                    holder = self._holder(queue[0])
                    self.withdraw()
                    raise LockHeld(self.name, holder)
                watched = [queue[at - 1]] + ([queue[0]] if follow_holder and at > 1 else [])
                answers = [(node, client.exists_async("%s/%s" % (self.dir, node), watch=on_change))
                           for node in watched]
                gone = False
                for node, answer in answers:
                    if self.session.call("watching %s/%s" % (self.dir, node), answer, self.op_timeout) is None:
                        gone = True
                if gone:
                    continue  # it left between the listing and the watch: look again
                if on_wait is not None and queue[0] != told:
                    holder = self._holder(queue[0])
                    if holder is None:
                        continue  # the holder left meanwhile: look again
                    told = queue[0]
                    on_wait(holder)
                wake.wait(max(0.0, deadline - time.monotonic()))
                if not client.connected and time.monotonic() < deadline:
                    # Suspended: wait (bounded) for the connection to come back before listing again.
                    wake.clear()
                    wake.wait(min(self.op_timeout, max(0.0, deadline - time.monotonic())))
        except LockHeld:
            raise
        except BaseException:
            self.withdraw(timeout=1.0)  # best effort: closing the session removes the node too
            raise
        finally:
            client.remove_listener(on_state)

    def _holder(self, node):
        path = "%s/%s" % (self.dir, node)
        try:
            data, stat = self.session.call("reading %s" % path, self.session.client.get_async(path), self.op_timeout)
        except NoNodeError:
            return None
        return Contender(node, data, stat)

    def withdraw(self, timeout=None):
        """Delete our contender node (held or queued). False when it was already gone or no server answered."""
        if self.path is None:
            return False
        timeout = self.op_timeout if timeout is None else timeout
        try:
            self.session.call("deleting %s" % self.path, self.session.client.delete_async(self.path), timeout)
            return True
        except NoNodeError:
            return False
        except (ZooError, ConnectionLoss, SessionExpiredError):
            return False
        finally:
            self.path = None

    release = withdraw


class Guard:
    """Watches a held lock from a thread and tells when it is, or may be, lost.

    Every heartbeat (HEARTBEAT_SHARE of the session timeout) it sends a ``sync`` and then reads our contender
    node, pipelined. A sync is answered only through the leader, which alone expires sessions, and it checks the
    session there; a follower cut off from the leader answers reads, not syncs. ``last_ok`` is the time (on
    ``_clock.now``, which counts suspend) at which the last heartbeat that came back with our node was *sent*:
    the leader heard from us no earlier than that, so it cannot expire the session before about
    ``last_ok + session timeout`` (docs/architecture.md, "The bound"). ``on_answer(last_ok)`` is called from the
    guard's thread at each such answer (the runner renews its guardian's deadline there); ``notify()`` on every
    change worth waking up for. ``lost`` is set (with ``reason``) when the node is gone, the session expired or
    was replaced, or the node was revoked (its data carries ``revoked``: a forced release).
    """

    def __init__(self, lock, notify, on_answer=None, interval=None):
        self.lock = lock
        self.session = lock.session
        self.notify = notify
        self.on_answer = on_answer
        self.last_ok = lock.last_ok if lock.last_ok is not None else now()
        self._interval = interval
        self.version = 0  # of our node's data, as last read: a change is looked at for "revoked"
        self.session_id = self.session.session_id
        self.lost = threading.Event()
        self.reason = None
        self.connected = True
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="zoo-locked-guard")
        self._thread.daemon = True

    @property
    def interval(self):
        """Seconds between heartbeats: a tenth of the session timeout the servers granted (now, not at the start)."""
        return self._interval or max(0.1, HEARTBEAT_SHARE * self.session.session_timeout)

    @property
    def deadline(self):
        """The earliest moment (``_clock.now``) at which the server could expire our session."""
        return self.last_ok + self.session.session_timeout

    def start(self):
        self.session.client.add_listener(self._on_state)
        self._thread.start()

    def stop(self):
        self._stop.set()
        try:
            self.session.client.remove_listener(self._on_state)
        except Exception:
            pass

    def _lose(self, reason):
        if not self.lost.is_set():
            self.reason = reason
            self.lost.set()
            self.notify()

    def _on_state(self, state):
        if state == KazooState.LOST:
            self._lose("the ZooKeeper session expired")
        else:
            self.connected = state == KazooState.CONNECTED
            self.notify()

    def _heartbeat(self, path):
        """One sync and read; (sent, data, stat) when answered, else None. Loses the lock when it is gone."""
        client = self.session.client
        interval = self.interval
        sent = now()
        synced = client.sync_async(path)
        answer = client.get_async(path)
        # Wait for this answer (however long it takes) before asking again: no pile-up. A server that leaves it
        # unanswered for two intervals has gone silent: move to another server while the session still has time
        # (kazoo itself would wait 2/3 of the session timeout).
        stalled = sent + 2 * interval
        while not answer.ready() and not self._stop.is_set():
            answer.wait(interval)
            if not answer.ready() and now() >= stalled:
                self.session.drop_connection()
                stalled = now() + 2 * interval
        if self._stop.is_set():
            return None
        try:
            synced.get(timeout=0.001)  # answered before the read (one session's requests are answered in order)
            data, stat = answer.get(timeout=0)
        except NoNodeError:
            self._lose("our lock node %s was deleted by someone else" % path)
            return None
        except SessionExpiredError:
            self._lose("the ZooKeeper session expired")
            return None
        except Exception as exc:  # ConnectionLoss, no answer, anything else: no evidence; last_ok stays
            self.reason = "heartbeat failed: %s" % (str(exc) or type(exc).__name__)
            return None
        if self.session.session_id != self.session_id:
            # kazoo opens a new session by itself once the old one expired: our node went with the old one.
            self._lose("the ZooKeeper session expired (kazoo opened a new one)")
            return None
        return sent, data, stat

    def _run(self):
        path = self.lock.path
        while not self._stop.is_set() and not self.lost.is_set():
            started = now()
            beat = self._heartbeat(path)
            if beat is not None:
                sent, data, stat = beat
                if stat.version != self.version:
                    revoked = revoked_by(data)
                    if revoked is not None:
                        self._lose("revoked by %s: a forced release" % revoked)
                        return
                    self.version = stat.version
                if sent > self.last_ok:
                    self.last_ok = sent
                    if self.on_answer is not None:
                        self.on_answer(sent)
                    self.notify()
            self._stop.wait(max(0.0, started + self.interval - now()))


def revoked_by(data):
    """Who revoked a contender, from its data (``{"revoked": {"by": OWNER, ...}}``), or None."""
    try:
        revoked = json.loads(data.decode("utf-8")).get("revoked") if data else None
    except (ValueError, AttributeError):
        return None
    if not revoked:
        return None
    return (revoked.get("by") if isinstance(revoked, dict) else None) or "someone"


# --- Locks held for someone else (the modules' detached holder) --------------------------------------------


def owned_by(contenders, owner, kind="hold"):
    """The contenders whose data names ``owner`` and ``kind``, holder first.

    The kind matters: a runner's contender may carry the same owner (a user name), and a playbook that
    releases its own locks must never break a running job.
    """
    return [c for c in contenders if c.data.get("owner") == owner and c.data.get("kind") == kind]


def delete_contender(session, root, name, node, timeout):
    """Delete one contender node of a lock, from any session: this is how a lock is released for its holder
    (whose Guard then sees the node gone) or broken. False when the node was already gone."""
    path = "%s/%s" % (lock_path(root, name), node)
    try:
        session.call("deleting %s" % path, session.client.delete_async(path), timeout)
        return True
    except NoNodeError:
        return False


def rewrite_contender(lock, data, timeout, version=-1):
    """Replace the JSON document of our own contender node (its token, the czxid, stays the same).

    With ``version`` (0: as created), only if nobody changed it since: kazoo's BadVersionError otherwise (a
    forced release marks the node ``revoked``, and that mark must not be overwritten).
    """
    encoded = json.dumps(data, sort_keys=True).encode("utf-8")
    lock.session.call("updating %s" % lock.path, lock.session.client.set_async(lock.path, encoded, version=version),
                      timeout)
    lock.data = encoded


def contender_grace(data):
    """The ``grace`` of a contender's data (seconds within which its holder, told to stop, has surely stopped its
    work), or None when it has none that makes sense."""
    grace = data.get("grace") if isinstance(data, dict) else None
    if isinstance(grace, bool) or not isinstance(grace, (int, float)) or not 0 < grace < float("inf"):
        return None
    return float(grace)


def revoke_contender(session, root, name, node, by, timeout):
    """Tell a lock's holder, from any session, to stop and let go: its node's data gets
    ``"revoked": {"by": BY, "at": ISO-8601 UTC}``, written with the version read (read again when it changed).

    Returns the node's data as it now is (a dict: a node whose data is not a JSON object, a foreign kazoo Lock,
    is left as it is, since nothing there would read the mark), or None when the node is gone. A node that is
    already marked keeps its first mark. Its holder's Guard reads the mark at its next heartbeat.
    """
    path = "%s/%s" % (lock_path(root, name), node)
    client = session.client
    deadline = time.monotonic() + timeout
    while True:
        try:
            raw, stat = session.call("reading %s" % path, client.get_async(path), deadline - time.monotonic())
        except NoNodeError:
            return None
        try:
            data = json.loads(raw.decode("utf-8")) if raw else None
        except ValueError:
            data = None
        if not isinstance(data, dict):
            return Contender(node, raw, stat).data  # {"identifier": ...}: not ours to mark
        if "revoked" in data:
            return data
        data = dict(data, revoked={"by": by, "at": utc_now()})
        encoded = json.dumps(data, sort_keys=True).encode("utf-8")
        try:
            session.call("revoking %s" % path, client.set_async(path, encoded, version=stat.version),
                         deadline - time.monotonic())
            return data
        except NoNodeError:
            return None
        except BadVersionError:
            if time.monotonic() >= deadline:
                raise ZooError("%s changed under us until we gave up revoking it" % path)


def wait_contender_gone(session, root, name, node, timeout):
    """Wait until a contender node is gone, at most ``timeout`` seconds; True when it is."""
    path = "%s/%s" % (lock_path(root, name), node)
    deadline = time.monotonic() + timeout
    changed = threading.Event()

    def on_change(event):
        changed.set()

    while True:
        changed.clear()
        left = deadline - time.monotonic()
        try:
            stat = session.call("watching %s" % path, session.client.exists_async(path, watch=on_change),
                                max(0.5, min(left, session.session_timeout)))
        except (ZooError, ConnectionLoss):
            stat = True  # no answer: we do not know; look again while there is time
        if stat is None:
            return True
        if left <= 0:
            return False
        changed.wait(min(left, 0.5))
