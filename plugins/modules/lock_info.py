#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: zoo-locked maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: lock_info
short_description: Show who holds and who waits for zoo-locked cron locks
version_added: 0.1.0
description:
  - Reads the zoo-locked locks in ZooKeeper, the runner's and those held by M(zoolocked.cron.lock) - holder, waiters,
    fencing token, since when, purpose - for the given names or for every lock under the root, as
    C(zoo-locked status --json) does. Changes nothing.
  - With O(runs), also the last run records of each job (written by C(zoo-locked run --schedule) or C(--slot)), as
    C(zoo-locked history NAME --json) shows them.
extends_documentation_fragment:
  - zoolocked.cron._connection
  - zoolocked.cron._attributes
  - zoolocked.cron._attributes.INFO_MODULE
options:
  names:
    description:
      - The lock names to show; all locks under the root when empty.
      - A name nobody holds or waits for is shown as free.
    type: list
    elements: str
    default: []
  runs:
    description:
      - How many of the last run records of each lock to return in RV(locks[].runs), newest first; V(0) for none.
    type: int
    default: 5
seealso:
  - module: zoolocked.cron.lock
author:
  - zoo-locked maintainers (@zoolocked)
"""

EXAMPLES = r"""
- name: Look at the invoice lock
  zoolocked.cron.lock_info:
    names: [invoice]
  delegate_to: localhost
  run_once: true
  register: invoice_lock

- name: Tell who holds it
  ansible.builtin.debug:
    msg: "invoice is held by {{ invoice_lock.locks[0].owner }} since {{ invoice_lock.locks[0].since }}"
  when: invoice_lock.locks[0].held
  run_once: true

- name: List every lock under the root
  zoolocked.cron.lock_info:
    root: /zoo-locked
  delegate_to: localhost
  run_once: true
  register: all_locks
"""

RETURN = r"""
root:
  description: The root of the lock tree that was read.
  returned: success
  type: str
  sample: /zoo-locked
locks:
  description: One entry per lock, in the order of O(names), else sorted by name.
  returned: success
  type: list
  elements: dict
  contains:
    name:
      description: The lock name.
      type: str
      sample: invoice
    held:
      description: Whether someone holds the lock.
      type: bool
      sample: true
    owner:
      description: The holder's owner (V(null) when free).
      type: str
      sample: ansible-playbook:deploy@ops1:40211
    token:
      description: The holder's fencing token (V(null) when free).
      type: int
      sample: 4294967342
    since:
      description: When the holder queued for the lock, ISO 8601 UTC (V(null) when free).
      type: str
      sample: "2026-03-01T02:00:00Z"
    purpose:
      description: The holder's purpose (V(null) when free).
      type: str
      sample: schema migration 42
    expires_at:
      description: When the holder's lease ends (locks held by M(zoolocked.cron.lock)), else V(null).
      type: str
      sample: "2026-03-01T03:00:00Z"
    holder:
      description:
        - The holder, V(null) when the lock is free. The keys are those of RV(zoolocked.cron.lock#module:holder) -
          C(host), C(pid), C(owner), C(purpose), C(kind) (V(hold) or V(run)), C(since), C(token), C(node), and
          C(expires_at) for held locks.
      type: dict
      sample:
        host: ops1
        pid: 40377
        owner: ansible-playbook:deploy@ops1:40211
        purpose: schema migration 42
        kind: hold
        since: "2026-03-01T02:00:00Z"
        token: 4294967342
        node: 0f6b8a0d2c9e4a31a0d1e0c2c5d1b7aa__lock__0000000003
        expires_at: "2026-03-01T03:00:00Z"
    waiters:
      description: Those waiting for the lock, first in line first, with the same keys as RV(locks[].holder).
      type: list
      elements: dict
    runs:
      description:
        - The last O(runs) run records of the job, newest first (none for jobs run without slots). Each has C(slot),
          C(state) (V(running), V(succeeded), V(failed), V(stopped), V(missed)), C(scheduled), C(updated) and
          C(attempts) (each with C(host), C(pid), C(token), C(start), C(end), C(exit), C(duration), C(state)).
      type: list
      elements: dict
      sample:
        - slot: 20260301T020000Z
          state: succeeded
          scheduled: "2026-03-01T02:00:00Z"
          attempts:
            - host: node2
              token: 4294967342
              start: "2026-03-01T02:00:01Z"
              end: "2026-03-01T02:03:12Z"
              exit: 0
              state: succeeded
"""

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

from ansible_collections.zoolocked.cron.plugins.module_utils._common import connection_argument_spec
from ansible_collections.zoolocked.cron.plugins.module_utils._hold import TaskError, lock_info
from ansible_collections.zoolocked.cron.plugins.module_utils._zk import HAS_KAZOO, KAZOO_IMPORT_ERROR


def main():
    argument_spec = connection_argument_spec()
    argument_spec.update(names=dict(type="list", elements="str", default=[]), runs=dict(type="int", default=5))
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    if not HAS_KAZOO:
        module.fail_json(msg=missing_required_lib("kazoo"), exception=str(KAZOO_IMPORT_ERROR))
    try:
        result = lock_info(module.params)
    except TaskError as exc:
        module.fail_json(msg=str(exc), **exc.result)
    module.exit_json(changed=False, **result)


if __name__ == "__main__":
    main()
