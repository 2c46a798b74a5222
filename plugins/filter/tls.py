# Copyright: zoo-locked maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Filter used by the zoolocked.cron.runner and zookeeper roles to check their TLS files on the controller."""

from __future__ import annotations

from ansible_collections.zoolocked.cron.plugins.module_utils import _tls


def tls_problems(files, names=None, encrypted_key_ok=True):
    """What is wrong with a CA certificate, a certificate, its key and the key's password (``_tls.tls_problems``).

    Each file is PEM text or the absolute path of a file on the controller; ``names`` gives the role variable
    of each field, so that each message names the variable the user sets. Empty when all is fine.
    """
    return _tls.tls_problems(files, names, encrypted_key_ok)


class FilterModule:
    def filters(self):
        return {"tls_problems": tls_problems}
