# -*- coding: utf-8 -*-
# Copyright: zoo-locked maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The clock of every deadline, in a module of its own so that the guardian can import it alone."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import time


def now():
    """Seconds on CLOCK_BOOTTIME: monotonic like time.monotonic, but it also counts the time the machine was
    suspended, during which the servers may expire our session (time.monotonic stands still then). The same
    clock in every process of the machine, so the runner and its guardian can share deadlines."""
    try:
        return time.clock_gettime(time.CLOCK_BOOTTIME)
    except AttributeError:  # not Linux
        return time.monotonic()
