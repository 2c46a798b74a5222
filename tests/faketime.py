# -*- coding: utf-8 -*-
"""Skew a process's wall clock for real, with libfaketime (Debian package ``faketime``; tests/setup-host installs it).

``skewed_env(offset)`` is the environment that makes a process (and everything it starts) see the wall clock
``offset`` seconds off: time.time(), datetime.now(), cron arithmetic, all of it, as on a machine whose clock is
wrong. The monotonic clocks stay real (FAKETIME_DONT_FAKE_MONOTONIC), as they are on such a machine; faking them
too hangs Python's timed waits (libfaketime does not intercept sem_clockwait, wolfcw/libfaketime#390).

libfaketime 0.9.10 (Debian 12) breaks absolute sleeps on the monotonic clock when it leaves that clock alone: they
fail with EINVAL (wolfcw/libfaketime#426), and Python 3.11's time.sleep() is one (kazoo sleeps so between
reconnects). A small library of our own, preloaded before libfaketime, sends those sleeps straight to the kernel;
it is compiled here once (gcc) into .cache/faketime/. And its "monotonic fix" of pthread_cond_timedwait (on by
default) makes the monotonic timed waits of Python's GIL time out at once: threads then fight for the GIL (30,000
futex calls a second instead of 400) and a loaded machine stalls the runner for seconds; FAKETIME_FORCE_MONOTONIC_FIX=0
turns it off (the monotonic clock is not faked, so there is nothing to fix).

A COMMAND started under a skewed runner inherits the preload: put ``REAL_CLOCK`` in front of it when its own time
stamps are compared with other nodes' (it drops the preload, so the COMMAND stamps real time).
"""

import functools
import glob
import hashlib
import os
import subprocess
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
CACHE = os.path.join(os.path.dirname(HERE), ".cache", "faketime")
REAL_CLOCK = ["env", "-u", "LD_PRELOAD", "-u", "FAKETIME", "-u", "FAKETIME_DONT_FAKE_MONOTONIC", "-u",
              "FAKETIME_FORCE_MONOTONIC_FIX"]

SLEEP_FIX_SOURCE = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

/* Sleeps on a clock libfaketime does not fake go straight to the kernel (tests/faketime.py says why). */
int clock_nanosleep(clockid_t clock, int flags, const struct timespec *request, struct timespec *remain)
{
    static int (*next)(clockid_t, int, const struct timespec *, struct timespec *);
    if (clock != CLOCK_REALTIME) {
        return syscall(SYS_clock_nanosleep, clock, flags, request, remain) == 0 ? 0 : errno;
    }
    if (next == NULL) {
        next = (int (*)(clockid_t, int, const struct timespec *, struct timespec *))dlsym(RTLD_NEXT,
                                                                                         "clock_nanosleep");
    }
    return next(clock, flags, request, remain);
}
"""


@functools.lru_cache(maxsize=None)
def library():
    """The path of libfaketime.so.1 (dpkg knows it; its usual places otherwise), or None when it is not installed."""
    try:
        listed = subprocess.run(["dpkg", "-L", "libfaketime"], capture_output=True, text=True, check=False).stdout
    except OSError:
        listed = ""
    found = [line for line in listed.splitlines() if line.endswith("/libfaketime.so.1")]
    found += glob.glob("/usr/lib/*/faketime/libfaketime.so.1") + glob.glob("/usr/lib/faketime/libfaketime.so.1")
    found = [path for path in found if os.path.exists(path)]
    return found[0] if found else None


@functools.lru_cache(maxsize=None)
def sleep_fix():
    """The compiled sleep fix (built once; concurrent builders each rename a whole file into place)."""
    path = os.path.join(CACHE, "sleepfix-%s.so" % hashlib.sha256(SLEEP_FIX_SOURCE.encode()).hexdigest()[:12])
    if os.path.exists(path):
        return path
    os.makedirs(CACHE, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
        source, built = os.path.join(tmp, "sleepfix.c"), os.path.join(tmp, "sleepfix.so")
        with open(source, "w") as handle:
            handle.write(SLEEP_FIX_SOURCE)
        try:
            done = subprocess.run(["gcc", "-shared", "-fPIC", "-O2", "-o", built, source, "-ldl"],
                                  capture_output=True, text=True, check=False)
        except OSError as exc:
            raise RuntimeError("tests/faketime.py needs gcc to build its sleep fix (apt-get install gcc): %s" % exc)
        if done.returncode != 0:
            raise RuntimeError("tests/faketime.py: gcc failed on the sleep fix:\n%s" % done.stderr)
        os.rename(built, path)
    return path


def skewed_env(offset):
    """The variables that make a process's wall clock run ``offset`` seconds (a float, either sign) off."""
    lib = library()
    if lib is None:
        raise RuntimeError("libfaketime is missing: run tests/setup-host (or apt-get install faketime)")
    return {"LD_PRELOAD": "%s:%s" % (sleep_fix(), lib), "FAKETIME": "%+.3fs" % offset,
            "FAKETIME_DONT_FAKE_MONOTONIC": "1", "FAKETIME_FORCE_MONOTONIC_FIX": "0"}
