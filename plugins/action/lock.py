# -*- coding: utf-8 -*-
# Copyright: zoo-locked maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Action plugin of zoolocked.cron.lock: the default owner and purpose, known only on the controller."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import getpass
import os
import socket
import sys

from ansible.plugins.action import ActionBase


def run_owner():
    """The default owner: ansible-playbook:USER@CONTROLLER:PID for a playbook run, PROGRAM:USER@CONTROLLER else.

    Action plugins run in a worker process forked from the main process of the run (multiprocessing with
    the fork start method), so the parent's pid names the playbook run, the same for every task on every
    host. An ad-hoc command (``ansible``) gets no pid: its locks outlive it, and a later ad-hoc command of
    the same user on the same controller releases them.
    """
    try:
        user = getpass.getuser()
    except Exception:  # no user name for this uid (containers)
        user = str(os.getuid())
    program = os.path.basename(sys.argv[0] or "") or "ansible"
    if program == "ansible-playbook":
        return "%s:%s@%s:%d" % (program, user, socket.gethostname(), os.getppid())
    return "%s:%s@%s" % (program, user, socket.gethostname())


class ActionModule(ActionBase):
    TRANSFERS_FILES = False

    def run(self, tmp=None, task_vars=None):
        task_vars = task_vars or {}
        result = super(ActionModule, self).run(tmp, task_vars)
        args = dict(self._task.args)
        if not args.get("owner"):
            args["owner"] = run_owner()
        if args.get("purpose") is None:
            args["purpose"] = "%s / %s" % (task_vars.get("ansible_play_name") or "play", self._task.get_name())
        result.update(self._execute_module(module_name="zoolocked.cron.lock", module_args=args, task_vars=task_vars))
        return result
