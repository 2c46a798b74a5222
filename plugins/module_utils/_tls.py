# -*- coding: utf-8 -*-
# Copyright: zoo-locked maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The one check of TLS files: a CA certificate, a certificate with its private key, and the key's password.

Private to the collection. The modules call it through ``_common.check_tls_files`` (just before connecting),
the roles through the ``zoolocked.cron.tls_problems`` filter (on the controller, before any host changes).
Each file is given as PEM text or as the absolute path of a PEM file, and the messages use the names the
caller gives (module options, role variables). No message shows the key, its password or any file's text.
Only the standard library is imported here (Python 3.9 and later).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
import ssl
import tempfile

FIELDS = ("ca_cert", "cert", "key", "key_password")


def _load(value, label):
    """(PEM bytes, None) of PEM text or of a file, or (None, problem)."""
    if "-----BEGIN" in value:
        return value.encode("utf-8"), None
    try:
        if not os.path.isabs(value):
            raise OSError(0, "not an absolute path")
        with open(value, "rb") as handle:
            return handle.read(), None
    except OSError as exc:
        return None, ("%s is neither PEM text nor a readable PEM file (%s): set it to the PEM text or to the "
                      "absolute path of a PEM file." % (label, exc.strerror or exc.__class__.__name__))


def _certificates(pem):
    """None when PEM holds at least one certificate OpenSSL loads, else the reason (never the text)."""
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cadata=pem.decode("ascii"))
    except UnicodeDecodeError:
        return "not ASCII"
    except (ssl.SSLError, ValueError, TypeError) as exc:
        return str(exc)
    return None


def _load_pair(key, cert, password):
    """Load KEY and CERT (PEM bytes) as a client or server would: None, or the SSLError."""
    # One private temporary file (mkstemp: mode 0600), key first: ssl wants files, and the texts may be secret.
    handle, path = tempfile.mkstemp(prefix="zoolocked-tls-", suffix=".pem")
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(key + b"\n" + cert if key is not None else cert)
        # A callable, so that OpenSSL never prompts on a terminal for an encrypted key's password.
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_cert_chain(path, password=lambda: password.encode("utf-8"))
    except ssl.SSLError as exc:
        return exc
    finally:
        os.unlink(path)
    return None


def tls_problems(files, names=None, encrypted_key_ok=True):
    """What is wrong with the TLS files in ``files``, one message each; empty when they are fine.

    ``files`` maps ``ca_cert``, ``cert``, ``key`` and ``key_password`` to PEM text, the absolute path of a PEM
    file, or nothing (None or ""). ``names`` maps the same keys to the names to show (an option, a role
    variable). The CA must load; the key needs its certificate, must belong to it and must open with the
    password (a certificate without ``key`` must hold its key itself). With ``encrypted_key_ok`` false (a
    ZooKeeper server's key) an encrypted key is refused.
    """
    names = dict(dict((field, field) for field in FIELDS), **dict(names or {}))
    values = dict((field, "" if files.get(field) is None else str(files.get(field))) for field in FIELDS)
    labels, pems, problems = {}, {}, []
    for field in ("ca_cert", "cert", "key"):
        value = values[field]
        if not value:
            continue
        # A path is shown, never text; and a key's value only when it is a file (anything else may be the key).
        shown = os.path.isfile(value) if field == "key" else "\n" not in value and len(value) <= 256
        labels[field] = names[field] + (" " + value if shown and "-----BEGIN" not in value else "")
        pems[field], problem = _load(value, labels[field])
        if problem:
            problems.append(problem)
    if pems.get("ca_cert") is not None:
        reason = _certificates(pems["ca_cert"])
        if reason:
            problems.append("%s: not a PEM CA certificate that can be loaded (%s): set it to the certificate of "
                            "the CA, in PEM form." % (labels["ca_cert"], reason))
    if values["key"] and not values["cert"]:
        problems.append("%s: set %s too (the certificate this key belongs to)." % (labels["key"], names["cert"]))
    reason = _certificates(pems["cert"]) if pems.get("cert") is not None else None
    if reason:
        problems.append("%s: not a PEM certificate that can be loaded (%s): set it to the certificate in PEM form."
                        % (labels["cert"], reason))
    if pems.get("cert") is None or reason or (values["key"] and pems.get("key") is None):
        return problems
    key = pems.get("key")
    key_label = labels.get("key", labels["cert"])
    encrypted = b"ENCRYPTED" in (pems["cert"] if key is None else key)
    if encrypted and not encrypted_key_ok:
        problems.append("%s is encrypted, and ZooKeeper reads only unencrypted keys: decrypt it (openssl pkey -in "
                        "KEY -out PLAIN) and keep the file secret." % key_label)
    elif encrypted and not values["key_password"]:
        problems.append("%s is encrypted: set %s to its password." % (key_label, names["key_password"]))
    else:
        error = _load_pair(key, pems["cert"], values["key_password"])
        if error is None:
            pass
        elif error.reason == "KEY_VALUES_MISMATCH":
            problems.append("%s and %s do not match: the key must belong to the certificate (set the key this "
                            "certificate was made for)." % (labels["cert"], key_label))
        elif encrypted:
            problems.append("%s does not open %s (%s): set the key's password (the value is not shown)."
                            % (names["key_password"], key_label, error))
        elif key is None:
            problems.append("%s holds no private key that can be loaded (%s): set %s to its key, or add the key to "
                            "the file." % (labels["cert"], error, names["key"]))
        else:
            problems.append("%s: not a PEM private key that can be loaded (%s): set it to the key of %s, in PEM "
                            "form." % (key_label, error, names["cert"]))
    return problems
