# -*- coding: utf-8 -*-
# Copyright: zoo-locked maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Slots and run records: each scheduled run of a job happens once across the cluster.

A lock stops two nodes from running a job at the same time, not one after the other. A *slot* is the
scheduled time a run was fired for; its *run record* is a persistent znode, written under the job's lock
before COMMAND starts and updated when it ends::

    ROOT/runs/NAME/SLOT      persistent; data: a JSON run record (see docs/architecture.md)

Records are read and written only by the holder of the job's lock (except reads), so they need no lock of
their own; writes carry the version read, so a holder that lost its lock cannot overwrite its successor.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
import re
import socket
import os
import time

try:
    from kazoo.exceptions import BadVersionError, ConnectionLoss, NodeExistsError, NoNodeError
except ImportError:  # reported by the caller through _zk.HAS_KAZOO
    pass

FORMAT_VERSION = 1
DEFAULT_KEEP = 100
SLOT_ID = re.compile(r"\A[A-Za-z0-9_-][A-Za-z0-9._:-]{0,99}\Z")
FINAL_STATES = ("succeeded", "failed", "stopped", "missed")


class SlotError(Exception):
    """A schedule or slot id is not usable; the message says why and what is allowed."""


def runs_path(root, name):
    return "%s/runs/%s" % (root, name)


def iso(timestamp):
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(timestamp)) if timestamp is not None else None


def clock():
    """The wall clock (time.time()) that slots are computed from: this machine's clock, as it is (tests skew it for
    real, with libfaketime)."""
    return time.time()


def check_slot_id(slot):
    if not SLOT_ID.match(slot or "") or slot in (".", ".."):
        return ("bad slot id %r: use 1-100 characters of A-Z a-z 0-9 . _ - : , not starting with '.'; "
                "ids that sort in time order (e.g. 2026-11-27T10:00) keep pruning right" % (slot,))
    return None


def check_schedule(expression):
    """An error message for a cron expression croniter cannot use, or None."""
    try:
        from croniter import croniter
    except ImportError as exc:
        return "--schedule needs the Python library croniter (%s)" % exc
    if not croniter.is_valid(expression):
        return ("bad schedule %r: use five cron fields (minute hour day-of-month month day-of-week, e.g. "
                "'*/15 * * * *') or @hourly, @daily, @weekly, @monthly, @yearly" % (expression,))
    return None


def slot_for_schedule(expression, now):
    """(slot id, scheduled timestamp, period) of the fire time nearest to ``now`` in the local time zone.

    cron fires on each node by that node's clock, so a runner starts within seconds of a fire time; the
    nearest fire time is the slot. Nodes whose clocks differ by less than half the period agree on it.
    """
    import datetime

    from croniter import croniter
    from dateutil.tz import tzlocal

    local = datetime.datetime.fromtimestamp(now, tzlocal())
    previous = croniter(expression, local).get_prev(datetime.datetime).timestamp()
    following = croniter(expression, local).get_next(datetime.datetime).timestamp()
    if now - previous <= following - now:
        scheduled = previous
        period = following - previous
    else:
        scheduled = following
        period = croniter(expression, datetime.datetime.fromtimestamp(following, tzlocal())).get_next(
            datetime.datetime).timestamp() - following
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(scheduled)), scheduled, period


_PERIODS = {}


def shortest_period(expression, fires=500):
    """Shortest time in seconds between two fire times of a cron expression, in wall-clock time.

    Counted over the first ``fires`` fire times from 2001-01-01 in naive time (no time zone, no DST), so every
    controller and node gets the same figure for the same expression. Used to size how long a job's other
    nodes wait for its lock (the crontab role's automatic ``--wait``).
    """
    if expression not in _PERIODS:
        import datetime

        from croniter import croniter

        fire_times = croniter(expression, datetime.datetime(2001, 1, 1))
        previous = fire_times.get_next(datetime.datetime)
        shortest = None
        for dummy in range(fires):
            following = fire_times.get_next(datetime.datetime)
            gap = (following - previous).total_seconds()
            shortest = gap if shortest is None else min(shortest, gap)
            previous = following
        _PERIODS[expression] = int(shortest)
    return _PERIODS[expression]


class Records:
    """The run records of one job."""

    def __init__(self, session, root, name):
        self.session = session
        self.name = name
        self.dir = runs_path(root, name)

    @property
    def timeout(self):
        return self.session.session_timeout

    def read(self, slot):
        """(record dict, version) or (None, None)."""
        path = "%s/%s" % (self.dir, slot)
        try:
            data, stat = self.session.call("reading %s" % path, self.session.client.get_async(path), self.timeout)
        except NoNodeError:
            return None, None
        try:
            record = json.loads(data.decode("utf-8"))
        except ValueError:
            record = None
        if not _well_formed(record):  # not ours, or written by someone else (an open tree can be written by anyone)
            record = {"slot": slot, "state": "unreadable", "attempts": []}
        return record, stat.version

    def write(self, slot, record, version, holder=None):
        """Create (version None) or update the record; returns the new version, or None if it changed under us.

        With ``holder`` (the path of our contender node) the write is a transaction that also checks that node:
        it lands only while we hold the lock, never after our session expired (kazoo would open a new session by
        itself and carry on). A ConnectionLoss is ambiguous (the write may have landed), so the record is read
        again through the leader and compared before the write is tried again, within the session timeout and
        only in the same session. Raises ZooError when the outcome cannot be written.
        """
        from ._zk import ZooError  # here: the crontab filters use this module on controllers without kazoo

        path = "%s/%s" % (self.dir, slot)
        record["updated"] = iso(time.time())
        data = json.dumps(record, sort_keys=True).encode("utf-8")
        client = self.session.client
        if holder is None:
            try:
                if version is None:
                    self.session.call("writing %s" % path, client.create_async(path, data, makepath=True), self.timeout)
                    return 0
                return self.session.call("writing %s" % path, client.set_async(path, data, version=version),
                                         self.timeout).version
            except (NodeExistsError, BadVersionError):
                return None
        session_id = self.session.session_id
        deadline = time.monotonic() + self.timeout
        if version is None:
            try:  # a transaction cannot make parents
                self.session.call("creating %s" % self.dir, client.create_async(self.dir, makepath=True), self.timeout)
            except NodeExistsError:
                pass
        while True:
            try:
                tx = client.transaction()
                tx.check(holder, -1)
                if version is None:
                    tx.create(path, data)
                else:
                    tx.set_data(path, data, version)
                checked, written = self.session.call("writing %s" % path, tx.commit_async(),
                                                     deadline - time.monotonic())
                if isinstance(checked, NoNodeError):
                    raise ZooError("our lock node %s is gone: the lock is not ours, so the record is not" % holder)
                if isinstance(written, (NodeExistsError, BadVersionError)):
                    return self._landed(path, data)  # ours, from an attempt whose answer was lost, or a successor's
                if isinstance(written, Exception):
                    raise written
                return 0 if version is None else written.version
            except ConnectionLoss:
                while not client.connected and time.monotonic() < deadline:
                    time.sleep(0.02)
                if not client.connected or self.session.session_id != session_id:
                    raise ZooError("the connection to ZooKeeper was lost while writing %s, and did not come back "
                                   "in the same session within %.1fs" % (path, self.timeout))
                try:
                    landed = self._landed(path, data)
                except (ConnectionLoss, ZooError):
                    continue
                if landed is not None:
                    return landed

    def _landed(self, path, data):
        """The version of the record at ``path`` if it holds exactly ``data`` (read through the leader), else None."""
        client = self.session.client
        synced = client.sync_async(path)
        answer = client.get_async(path)
        self.session.call("syncing %s with the leader" % path, synced, self.timeout)
        try:
            current, stat = self.session.call("reading %s" % path, answer, self.timeout)
        except NoNodeError:
            return None
        return stat.version if current == data else None

    def slots(self):
        try:
            children = self.session.call("listing %s" % self.dir, self.session.client.get_children_async(self.dir),
                                         self.timeout)
        except NoNodeError:
            return []
        return sorted(children)

    def prune(self, keep, current=None):
        """Delete the oldest records beyond the last ``keep``, never ``current``; returns how many went.

        Oldest by creation (the record node's czxid), not by name: slot ids given with --slot need not sort in
        time order, and the record just created must not be the one that goes.
        """
        slots = self.slots()
        if len(slots) <= keep:
            return 0
        client = self.session.client
        pending = [(slot, client.exists_async("%s/%s" % (self.dir, slot))) for slot in slots if slot != current]
        made = []
        for slot, answer in pending:
            stat = self.session.call("reading %s/%s" % (self.dir, slot), answer, self.timeout)
            if stat is not None:
                made.append((stat.czxid, slot))
        made.sort()
        gone = 0
        for dummy_czxid, slot in made[:max(0, len(slots) - keep)]:
            try:
                self.session.call("pruning", client.delete_async("%s/%s" % (self.dir, slot)), self.timeout)
                gone += 1
            except NoNodeError:
                pass
        return gone

    def history(self, limit):
        """The last ``limit`` records, newest first."""
        result = []
        for slot in reversed(self.slots()[-limit:] if limit else self.slots()):
            record, dummy_version = self.read(slot)
            if record is not None:
                result.append(record)
        return result


def new_record(name, slot, scheduled):
    return {"v": FORMAT_VERSION, "name": name, "slot": slot, "scheduled": iso(scheduled), "state": "running",
            "attempts": []}


def new_attempt(token):
    return {"host": socket.gethostname(), "pid": os.getpid(), "token": token, "start": iso(time.time()),
            "started": time.time(), "end": None, "exit": None, "state": "running"}


def _well_formed(record):
    """Whether a run record has the shape this module writes: a state, and attempts that are mappings."""
    if not isinstance(record, dict) or not isinstance(record.get("state"), str):
        return False
    attempts = record.get("attempts", [])
    return isinstance(attempts, list) and all(isinstance(attempt, dict) for attempt in attempts)


def summary(record):
    """One line about who ran a slot, for the log."""
    attempts = record.get("attempts") if _well_formed(record) else None
    last = attempts[-1] if attempts else {}
    return "%s by %s (token %s, exit %s, ended %s)" % (
        record.get("state"), last.get("host", "?"), last.get("token"), last.get("exit"), last.get("end"))
