#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: zoo-locked maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: lock
short_description: Hold a zoo-locked cron lock from a playbook, beyond the task
version_added: 0.1.0
description:
  - Takes or releases a lock of the zoo-locked runner, the same ZooKeeper locks that C(zoo-locked run NAME -- COMMAND)
    takes on the cron nodes. While a playbook holds a lock, no node starts the cron job of that name (the runner
    waits or skips as it is configured to); a job that runs holds the lock off from the playbook.
  - O(state=acquired) returns once the lock is held, and it B(stays held after the task), through the following tasks,
    until a O(state=released) task with the same O(name) and O(owner) (from any host), until O(lease) seconds have
    passed, or until the host that holds it dies or loses ZooKeeper for longer than the session timeout.
  - A small detached process on the host that runs the module (the I(holder)) keeps the ZooKeeper session that holds
    the lock. With the default O(owner) and the module run on the controller (O(ignore:delegate_to=localhost)), the holder
    also releases the lock when the C(ansible-playbook) run ends without releasing it (killed, interrupted).
  - The holder logs to syslog as C(zoo-locked-hold) when it takes and lets go of a lock, and why.
  - On a host where systemd-logind kills the processes of a session at logout (C(KillUserProcesses=yes), not the
    default on Debian), a holder started over SSH dies with the connection and the lock frees at session expiry;
    run the module on the controller there (C(delegate_to)).
  - The locks are fair (first come, first served) and carry a fencing token that grows with every new holder.
extends_documentation_fragment:
  - zoolocked.cron._connection
  - zoolocked.cron._attributes
attributes:
  check_mode:
    support: full
    details:
      - Connects to ZooKeeper and looks; changes nothing. O(state=acquired) on a lock held by someone else predicts
        a change and warns, as the real run would have to wait. O(force=true) reports the revocation it would do
        (RV(how=revoked)) and waits for nothing.
  diff_mode:
    support: none
  idempotent:
    support: full
    details:
      - Acquiring a lock that this O(owner) holds, or releasing one it does not hold, changes nothing (the latter warns
        when someone else holds the lock).
  action:
    support: full
    details:
      - The action plugin sets the default O(owner) and O(purpose) on the controller.
    description: Has an action plugin that runs on the controller first.
options:
  name:
    description:
      - The lock name, the runner's C(NAME) - usually the name of the cron job to hold off.
      - 1 to 100 characters of C(A-Z a-z 0-9 . _ -), not starting with C(.).
    type: str
    required: true
  state:
    description:
      - V(acquired) takes the lock (waiting up to O(wait) seconds) and keeps it after the task.
      - V(released) lets go of the lock held by O(owner); also a place in the queue that O(owner) still waits for.
    type: str
    choices: [acquired, released]
    default: acquired
  wait:
    description:
      - With O(state=acquired), how many seconds to wait for a lock that is held by someone else (a running cron
        job, another playbook). Then the task fails, naming the holder.
      - V(0) does not wait, as the runner's C(--wait) default.
    type: float
    default: 0
  lease:
    description:
      - With O(state=acquired), how many seconds the lock may stay held without being released, counted from the
        moment it is held. Then the holder lets it go by itself.
      - Acquiring again a lock the owner holds does not extend its lease.
    type: float
    default: 3600
  owner:
    description:
      - Who holds the lock, shown to others; the lock is released by this owner.
      - Locks of the same owner are the same lock - acquiring one from several hosts of a play holds it once.
      - Defaults to C(ansible-playbook:USER@CONTROLLER:PID), the controller's user and host and the process id of
        the C(ansible-playbook) run, set by the action plugin. It is the same for every task of the run, on every
        host, so a later task of the same run releases it. Set an explicit owner to release the lock from another
        run (for instance to hold a job off across playbooks); such a lock is not tied to the run that took it.
      - An ad-hoc command (C(ansible -m zoolocked.cron.lock)) defaults to C(ansible:USER@CONTROLLER), without a
        pid - its lock outlives the command, and a later ad-hoc command of the same user releases it.
      - At most 200 characters, on one line.
    type: str
  purpose:
    description:
      - Free text shown to others who find the lock held (C(zoo-locked status), M(zoolocked.cron.lock_info), failure
        messages).
      - Defaults to C(PLAY / TASK), the names of the play and the task.
      - At most 1000 characters.
    type: str
  force:
    description:
      - With O(state=released), also take the lock away when someone else holds it (another playbook, or a running
        cron job), with a warning naming the holder.
      - The holder is B(revoked) first - its lock node is marked, and it stops and lets go (a cron job's runner stops
        its command, SIGTERM then SIGKILL, and exits 70; a playbook's holder just lets go). The task waits until it
        has let go, at most the I(grace) its node names (its session timeout) plus a tenth of it and a second (a
        holder without one, such as a foreign kazoo Lock, gets this task's session timeout). Only a holder still
        there after that is B(broken) - its node is deleted. So the lock passes on only once the old holder's work
        has stopped (RV(how)).
      - Without O(force), releasing a lock that someone else holds changes nothing and warns, naming the holder.
      - Only with O(state=released).
    type: bool
    default: false
seealso:
  - module: zoolocked.cron.lock_info
author:
  - zoo-locked maintainers (@zoolocked)
"""

EXAMPLES = r"""
- name: Hold the invoice job off on every node while the database migrates
  zoolocked.cron.lock:
    name: invoice
    wait: 600  # let a running invoice job finish first
    lease: 7200
    purpose: "schema migration {{ migration_version }}"
    hosts: zk1.example.com:2181,zk2.example.com:2181,zk3.example.com:2181
  delegate_to: localhost
  run_once: true

- name: Migrate
  ansible.builtin.command: /opt/app/bin/migrate
  run_once: true

- name: Let the invoice job run again
  zoolocked.cron.lock:
    name: invoice
    state: released
    hosts: zk1.example.com:2181,zk2.example.com:2181,zk3.example.com:2181
  delegate_to: localhost
  run_once: true

- name: Only one deploy playbook at a time, released in always whatever happens
  block:
    - name: Take the deploy lock
      zoolocked.cron.lock:
        name: deploy
        wait: 1800
        purpose: deploy of {{ app_version }}
      delegate_to: localhost
      run_once: true
    - name: Deploy
      ansible.builtin.include_tasks: deploy.yml
  always:
    - name: Release the deploy lock
      zoolocked.cron.lock:
        name: deploy
        state: released
      delegate_to: localhost
      run_once: true

- name: Take a lock away from someone else (warns with who it was; waits for it to stop within its grace)
  zoolocked.cron.lock:
    name: deploy
    state: released
    force: true
  delegate_to: localhost
  run_once: true
"""

RETURN = r"""
name:
  description: The lock name.
  returned: always
  type: str
  sample: invoice
owner:
  description: The owner the task acted for (the default one when O(owner) was not set).
  returned: always
  type: str
  sample: ansible-playbook:deploy@ops1:40211
token:
  description:
    - The fencing token of the holder in RV(holder) - ZooKeeper's transaction id of its lock node; every new holder
      of a lock has a greater one.
    - V(null) when RV(holder) is.
  returned: always
  type: int
  sample: 4294967342
holder:
  description:
    - With O(state=acquired), the holder of the lock (this owner; in check mode whoever holds it now, V(null) when it
      is free).
    - With O(state=released), the holder that was released (or, with O(force=true), revoked or broken; or would be in
      check mode); V(null) when this owner did not hold the lock and none was taken away.
  returned: always
  type: dict
  contains:
    host:
      description: Host name of the process that holds the lock (the detached holder, or the runner).
      type: str
      sample: ops1
    pid:
      description: Process id of that process; sending it SIGTERM releases the lock.
      type: int
      sample: 40377
    owner:
      description: The owner of the lock.
      type: str
    purpose:
      description: The purpose given by the holder.
      type: str
      sample: schema migration 42
    kind:
      description: V(hold) for a lock held by this module, V(run) for a cron job that runs under the runner.
      type: str
      sample: hold
    since:
      description: When the holder queued for the lock, ISO 8601 UTC.
      type: str
      sample: "2026-03-01T02:00:00Z"
    token:
      description: The fencing token.
      type: int
    node:
      description: The holder's lock node (its name in ZooKeeper under ROOT/locks/NAME).
      type: str
      sample: 0f6b8a0d2c9e4a31a0d1e0c2c5d1b7aa__lock__0000000003
    expires_at:
      description: When the lease ends, ISO 8601 UTC (locks held by this module only).
      type: str
      sample: "2026-03-01T03:00:00Z"
    identifier:
      description: The data of a holder that is not zoo-locked's (a foreign kazoo Lock's identifier), as text.
      type: str
      sample: a foreign tool
expires_at:
  description: When the lease of RV(holder) ends, ISO 8601 UTC; V(null) when there is no such holder or it has no lease.
  returned: always
  type: str
  sample: "2026-03-01T03:00:00Z"
how:
  description:
    - With O(state=released), what happened to the lock's holder.
    - V(released) - this owner's lock (or its place in the queue) was released.
    - V(revoked) - someone else's lock (O(force=true)) was revoked, and its holder stopped and let go within its grace
      (in check mode - would be revoked).
    - V(broken) - the revoked holder still held the lock after its grace, and its node was deleted; a holder that did
      not react may still be at work.
    - V(gone) - the holder to be revoked let go by itself before it could be told.
    - V(null) - nothing was done (this owner holds nothing here).
  returned: when state=released
  type: str
  sample: revoked
revoked:
  description: With O(state=released), whether someone else's lock was taken away (RV(how) V(revoked) or V(broken)).
  returned: when state=released
  type: bool
  sample: true
waited:
  description:
    - With O(state=released), seconds spent waiting for a revoked holder to let go (V(0) otherwise, and in check mode).
  returned: when state=released
  type: float
  sample: 0.31
msg:
  description: What was done, or why nothing was.
  returned: sometimes
  type: str
  sample: the lock invoice is not held by ansible-playbook:deploy@ops1:40211
"""

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

from ansible_collections.zoolocked.cron.plugins.module_utils._common import connection_argument_spec
from ansible_collections.zoolocked.cron.plugins.module_utils._hold import TaskError, lock_task
from ansible_collections.zoolocked.cron.plugins.module_utils._zk import HAS_KAZOO, KAZOO_IMPORT_ERROR


def main():
    argument_spec = connection_argument_spec()
    argument_spec.update(
        name=dict(type="str", required=True),
        state=dict(type="str", choices=["acquired", "released"], default="acquired"),
        wait=dict(type="float", default=0),
        lease=dict(type="float", default=3600),
        owner=dict(type="str"),
        purpose=dict(type="str"),
        force=dict(type="bool", default=False),
    )
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    if not HAS_KAZOO:
        module.fail_json(msg=missing_required_lib("kazoo"), exception=str(KAZOO_IMPORT_ERROR))
    try:
        result = lock_task(module.params, module.check_mode)
    except TaskError as exc:
        module.fail_json(msg=str(exc), name=module.params["name"], **exc.result)
    for warning in result.pop("warnings"):
        module.warn(warning)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
