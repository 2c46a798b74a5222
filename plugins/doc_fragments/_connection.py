# -*- coding: utf-8 -*-
# Copyright: zoo-locked maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

# Private to the collection: the ZooKeeper connection options of every module (argument spec in
# plugins/module_utils/_common.py).

from __future__ import absolute_import, division, print_function

__metaclass__ = type


class ModuleDocFragment(object):
    DOCUMENTATION = r"""
options:
  hosts:
    description:
      - ZooKeeper servers, comma-separated C(HOST[:PORT]) (port 2181 when left out).
      - When not set, the module looks where the zoo-locked runner looks, on the host that runs the module
        (the delegated host with C(delegate_to)) - first the environment variable E(ZOO_LOCKED_HOSTS), then the
        runner's config file (O(config)), then V(127.0.0.1:2181). So on a cron node the module finds the
        ZooKeeper that the runner uses.
    type: str
  root:
    description:
      - Root of the lock tree in ZooKeeper; must be the runner's root for the module and the runner to share
        locks.
      - When not set, from E(ZOO_LOCKED_ROOT), then the config file, then V(/zoo-locked).
    type: str
  session_timeout:
    description:
      - ZooKeeper session timeout in seconds (1 to 600). The server may grant a shorter or longer one within
        its own bounds.
      - A lock held by a host that dies or loses ZooKeeper is free again after about this long.
      - When not set, from E(ZOO_LOCKED_SESSION_TIMEOUT), then the config file, then V(10).
    type: float
  connect_timeout:
    description:
      - Fail when no ZooKeeper server answers within this many seconds (0.1 to 600).
      - When not set, from E(ZOO_LOCKED_CONNECT_TIMEOUT), then the config file, then V(5).
    type: float
  config:
    description:
      - The runner's config file on the host that runs the module (INI, one section C([zoo-locked]) with the
        keys C(hosts), C(root), C(session_timeout), C(connect_timeout)).
      - When not set, E(ZOO_LOCKED_CONFIG), else C(/etc/zoo-locked/zoo-locked.conf) when that file exists.
      - A file given here or in E(ZOO_LOCKED_CONFIG) must exist.
    type: path
  auth:
    description:
      - ZooKeeper credentials for the session. With credentials, every node the module creates gets the runner's
        lock-tree ACL (all rights for this identity, read for anyone).
      - Scheme C(digest) is ZooKeeper's digest scheme (kazoo's C(auth_data)); the password reaches the servers, so
        use it with O(tls).
      - Scheme C(sasl) is SASL DIGEST-MD5 against the servers' JAAS users (the password never crosses the wire; the
        identity in ACLs is C(sasl:USER)). It needs the Python library C(pure-sasl) where the module runs.
      - When not set, the runner's C(auth) setting (E(ZOO_LOCKED_AUTH) or the config file, C(digest:USER:PASSWORD) or
        C(sasl:USER:PASSWORD)), else none.
    type: list
    elements: dict
    suboptions:
      scheme:
        description: The authentication scheme, C(digest) or C(sasl) (others go to the servers as they are).
        type: str
        default: digest
      credential:
        description: The credential, for the C(digest) and C(sasl) schemes C(USER:PASSWORD). Never logged.
        type: str
        required: true
  tls:
    description:
      - Connect to ZooKeeper with TLS (the servers' secure client port).
      - When not set, the runner's C(tls) setting (config file), else V(false).
    type: bool
  tls_ca_cert:
    description:
      - CA certificate (PEM file) to check the servers' certificates with; absolute path on the host that runs the
        module. When not set, the runner's C(tls_ca_cert) setting.
      - When set, it is the only CA trusted (the system's trust store is not used besides).
    type: path
  tls_client_cert:
    description: Client certificate (PEM file). When not set, the runner's C(tls_client_cert) setting.
    type: path
  tls_client_key:
    description: Private key of O(tls_client_cert) (PEM file). When not set, the runner's C(tls_client_key) setting.
    type: path
  tls_client_key_password:
    description: Password of O(tls_client_key). Never logged.
    type: str
  tls_validate_certs:
    description:
      - Check the servers' certificates and host names (they must match O(hosts)).
      - When not set, the runner's C(tls_validate_certs) setting, else V(true).
    type: bool
requirements:
  - kazoo (the Python library; tested with 2.11) for the Python that runs the module - on the delegated host with
    C(delegate_to). The runner role installs it into the runner's own virtualenv, not for Ansible.
notes:
  - Settings are resolved as the runner resolves them - option, then environment, then config file, then
    default - but on the host that runs the module.
"""
