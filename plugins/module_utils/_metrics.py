# -*- coding: utf-8 -*-
# Copyright: zoo-locked maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Prometheus text-format metrics of a job, for node_exporter's textfile collector.

One file per job and node, ``DIR/zoo_locked_<name>.prom``, in the text format of prometheus-client, replaced
atomically. Values this run did not change (the last success when this run failed, the count of skips) are
carried over from the previous file.

The runner often writes as root into a directory the jobs' users can write to, so every file is reached through
the directory's descriptor and nothing is followed or blocked on: no symbolic link is followed (O_NOFOLLOW), a
FIFO, socket, device or directory in place of the metrics file is refused (opened with O_NONBLOCK, then fstat),
the previous file is read only up to MAX_PREVIOUS bytes, and the new file is written to a fresh temporary name
(O_CREAT | O_EXCL) and renamed over the old one, so an existing file is never written into.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import binascii
import errno
import os
import stat

GAUGES = {
    "zoo_locked_last_start_timestamp_seconds": "When this node last started the job's COMMAND (Unix time).",
    "zoo_locked_last_success_timestamp_seconds": "When a run of the job on this node last ended with exit 0.",
    "zoo_locked_last_duration_seconds": "How long the last run of the job on this node took.",
    "zoo_locked_last_exit_code": "The runner's exit code for the last run of the job on this node.",
}
SKIPS = "zoo_locked_slot_done_skips"
SKIPS_HELP = "Runs of the job on this node that did not start COMMAND because the slot was already done."
MAX_PREVIOUS = 16384  # bytes; a job's file is under 1 KiB, anything bigger was not written by the runner

_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_NOCTTY | os.O_CLOEXEC
_KINDS = ((stat.S_ISDIR, "directory"), (stat.S_ISFIFO, "FIFO"), (stat.S_ISSOCK, "socket"),
          (stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device"))


class MetricsError(IOError):
    """The metrics could not be written; the message names the file and the fix."""


def path_for(directory, name):
    return os.path.join(directory, "zoo_locked_%s.prom" % name.replace(".", "_").replace("-", "_"))


def _not_regular(path, kind):
    return MetricsError("metrics file %s is a %s, not a regular file: remove it (zoo-locked neither follows nor "
                        "replaces it; someone other than the runner put it there)" % (path, kind))


def _open_directory(directory):
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            raise MetricsError("metrics directory %s does not exist%s: create it (the crontab role does when "
                               "crontab_metrics_dir is set) or fix metrics_dir / --metrics-dir"
                               % (directory, "" if exc.errno == errno.ENOENT else " as a directory"))
        raise MetricsError("cannot open metrics directory %s: %s" % (directory, exc.strerror))
    mode = os.fstat(fd).st_mode
    if mode & (stat.S_IWGRP | stat.S_IWOTH) and not mode & stat.S_ISVTX:
        os.close(fd)
        raise MetricsError("metrics directory %s (mode %04o) can be written by other users but is not sticky, so "
                           "they could replace or delete any job's metrics: chmod +t %s (the crontab role makes "
                           "it 1775)" % (directory, stat.S_IMODE(mode), directory))
    return fd


def _previous(dir_fd, path, name):
    """The previous file's values for job NAME: {} when there is none, or it is not ours or not readable."""
    try:
        fd = os.open(os.path.basename(path), _READ, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise _not_regular(path, "symbolic link")
        if exc.errno == errno.ENXIO:
            raise _not_regular(path, "socket")
        if exc.errno in (errno.ENOENT, errno.EACCES):
            return {}
        raise
    try:
        info = os.fstat(fd)
        for is_kind, kind in _KINDS:
            if is_kind(info.st_mode):
                raise _not_regular(path, kind)
        # Another user's file (a job user may create the file of a job that has not run yet) is not carried over.
        if info.st_uid not in (0, os.geteuid()) or info.st_size > MAX_PREVIOUS:
            return {}
        chunks, size = [], 0
        while size <= MAX_PREVIOUS:
            chunk = os.read(fd, MAX_PREVIOUS + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    finally:
        os.close(fd)
    if size > MAX_PREVIOUS:  # it grew while we read it
        return {}
    from prometheus_client.parser import text_string_to_metric_families

    values = {}
    try:
        for family in text_string_to_metric_families(b"".join(chunks).decode("utf-8")):
            for sample in family.samples:
                if sample.labels.get("job") == name:
                    values[sample.name] = sample.value
    except (ValueError, IndexError, KeyError, TypeError):
        return {}
    return values


def create_new(dir_fd, name, mode=0o644):
    """Open a new file NAME in the directory for writing; fails with EEXIST if anything has that name."""
    return os.open(name, _CREATE, mode, dir_fd=dir_fd)


def _replace(dir_fd, path, data):
    final = os.path.basename(path)
    temporary = "%s.%d.%s" % (final, os.getpid(), binascii.hexlify(os.urandom(6)).decode("ascii"))
    try:
        fd = create_new(dir_fd, temporary)
    except OSError as exc:
        raise MetricsError("cannot create the temporary file %s.*: %s" % (path, exc.strerror))
    try:
        try:
            os.fchmod(fd, 0o644)  # node_exporter reads it as another user, whatever the runner's umask
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)
        try:
            os.rename(temporary, final, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except OSError as exc:
            raise MetricsError("cannot replace metrics file %s: %s (in a sticky directory only the file's owner "
                               "or root can: remove it, or run the job as that owner)" % (path, exc.strerror))
    except BaseException:
        try:
            os.unlink(temporary, dir_fd=dir_fd)
        except OSError:
            pass
        raise


def write(directory, name, start=None, duration=None, exit_code=None, success=False, slot_done=False):
    """Update the job's metrics file; returns its path."""
    from prometheus_client import CollectorRegistry, Counter, Gauge, disable_created_metrics, generate_latest

    dir_fd = _open_directory(directory)
    try:
        disable_created_metrics()  # a *_created series per job is noise in a textfile
        path = path_for(directory, name)
        values = _previous(dir_fd, path, name)
        if start is not None:
            values["zoo_locked_last_start_timestamp_seconds"] = start
            values["zoo_locked_last_duration_seconds"] = duration
            values["zoo_locked_last_exit_code"] = exit_code
            if success:
                values["zoo_locked_last_success_timestamp_seconds"] = start + duration
        registry = CollectorRegistry()
        for metric, help_text in GAUGES.items():
            if values.get(metric) is not None:
                Gauge(metric, help_text, ["job"], registry=registry).labels(job=name).set(values[metric])
        skips = Counter(SKIPS, SKIPS_HELP, ["job"], registry=registry)
        skips.labels(job=name).inc(values.get(SKIPS + "_total", 0) + (1 if slot_done else 0))
        _replace(dir_fd, path, generate_latest(registry))
    finally:
        os.close(dir_fd)
    return path
