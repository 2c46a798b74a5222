# -*- coding: utf-8 -*-
# Copyright: zoo-locked maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The ZooKeeper connection options every module shares, and how they become settings.

Private to the collection. Documented once in ``plugins/doc_fragments/_connection.py``; the settings are
resolved by ``_config.resolve`` exactly as the runner resolves them (option, then environment, then the
runner's config file, then the default), so a module on a cron node finds the ZooKeeper the runner uses.
Only the standard library is imported here.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import ssl

from . import _config

MAX_SECONDS = 31 * 24 * 3600  # as the runner: nothing waits or holds longer than a month


def connection_argument_spec():
    """The connection options (no defaults here: an unset option falls back as the runner's settings do)."""
    return dict(
        hosts=dict(type="str"),
        root=dict(type="str"),
        session_timeout=dict(type="float"),
        connect_timeout=dict(type="float"),
        config=dict(type="path"),
        auth=dict(
            type="list",
            elements="dict",
            options=dict(
                scheme=dict(type="str", default="digest"),
                credential=dict(type="str", required=True, no_log=True),
            ),
        ),
        tls=dict(type="bool"),
        tls_ca_cert=dict(type="path"),
        tls_client_cert=dict(type="path"),
        tls_client_key=dict(type="path", no_log=False),
        tls_client_key_password=dict(type="str", no_log=True),
        tls_validate_certs=dict(type="bool"),
    )


# Options that are runner settings too (config file, environment), validated by _config as the runner does.
SETTING_OPTIONS = ("hosts", "root", "session_timeout", "connect_timeout",
                   "tls", "tls_ca_cert", "tls_client_cert", "tls_client_key", "tls_validate_certs")


def connection_settings(params, environ=None):
    """The runner's settings (hosts, root, timeouts, config, auth, tls...) with the module's options on top.

    Raises ``_config.ConfigError`` naming the option, variable or file that is wrong.
    """
    flags = {"config": params.get("config")}
    for key in SETTING_OPTIONS:
        value = params.get(key)
        flags[key] = None if value is None else _config.check_setting(key, value, "option %s" % key)
    settings = _config.resolve(flags, environ)
    if params.get("tls_client_key_password") is not None:
        settings["tls_client_key_password"] = params["tls_client_key_password"]
    if params.get("auth"):
        # A digest credential is checked as the runner checks ZOO_LOCKED_AUTH, before connecting: a malformed
        # one would otherwise create the lock tree with an ACL nobody can write to. Other schemes go to the
        # servers as they are (they refuse what they do not know).
        settings["auth"] = []
        for index, entry in enumerate(params["auth"]):
            if entry["scheme"] == "digest":
                settings["auth"] += _config.check_auth("digest:%s" % entry["credential"],
                                                       "option auth[%d] (scheme digest)" % index)
            else:
                settings["auth"].append((entry["scheme"], entry["credential"]))
    else:  # whatever the runner's settings hold (once the runner reads credentials), else none
        settings["auth"] = settings.get("auth") or []
    return settings


def check_tls_files(settings):
    """Load the TLS files as kazoo will, just before connecting: a wrong file is then named as such.

    Without this a CA file that is not PEM, a key without its certificate or a key that does not match
    shows up only as "no ZooKeeper server answered" after the connect timeout. Raises ConfigError naming
    the setting; never shows the key's password.
    """
    if not settings.get("tls"):
        return
    ca, cert, key = settings.get("tls_ca_cert"), settings.get("tls_client_cert"), settings.get("tls_client_key")
    if key and not cert:
        raise _config.ConfigError("tls_client_key %s: set tls_client_cert too (the certificate this key belongs to)"
                                  % key)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if ca:
        try:
            context.load_verify_locations(cafile=ca)
        except (ssl.SSLError, OSError, ValueError) as exc:
            raise _config.ConfigError("tls_ca_cert %s: not a PEM CA certificate that can be loaded (%s)" % (ca, exc))
    if cert:
        password = settings.get("tls_client_key_password") or ""
        try:
            # A callable, so that OpenSSL never prompts on a terminal for an encrypted key's password.
            context.load_cert_chain(cert, key, password=lambda: password.encode("utf-8"))
        except (ssl.SSLError, OSError, ValueError) as exc:
            raise _config.ConfigError(
                "tls_client_cert %s%s: cannot load the client certificate and its key (%s); they must be PEM files, "
                "the key must belong to the certificate, and an encrypted key needs tls_client_key_password"
                % (cert, " with tls_client_key %s" % key if key else "", exc))


def check_seconds(value, option, positive=False):
    """A number of seconds from 0 (or above 0) to MAX_SECONDS, or ConfigError naming the option."""
    seconds = _config.check_seconds(value, "option %s" % option, 0.0)
    if seconds > MAX_SECONDS:
        raise _config.ConfigError("option %s: must be at most %d seconds (31 days), got %r" % (option, MAX_SECONDS, value))
    if positive and seconds == 0:
        raise _config.ConfigError("option %s: must be more than 0 seconds, got %r" % (option, value))
    return seconds


def check_text(value, option, one_line=True):
    """Owner or purpose of a playbook lock (the runner's rule, _config.check_text)."""
    return _config.check_text(value, option, "option %s" % option, one_line)


def check_name(name, option="name"):
    problem = _config.check_lock_name(name)
    if problem:
        raise _config.ConfigError("option %s: %s" % (option, problem))
    return name
