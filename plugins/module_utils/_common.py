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

from . import _config, _tls

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
        # A digest or sasl credential is checked as the runner checks ZOO_LOCKED_AUTH, before connecting: a
        # malformed one would otherwise create the lock tree with an ACL nobody can write to. Other schemes go to
        # the servers as they are (they refuse what they do not know).
        settings["auth"] = []
        for index, entry in enumerate(params["auth"]):
            if entry["scheme"] in _config.AUTH_SCHEMES:
                settings["auth"] += _config.check_auth("%s:%s" % (entry["scheme"], entry["credential"]),
                                                       "option auth[%d] (scheme %s)" % (index, entry["scheme"]))
            else:
                settings["auth"].append((entry["scheme"], entry["credential"]))
    else:  # whatever the runner's settings hold (once the runner reads credentials), else none
        settings["auth"] = settings.get("auth") or []
    return settings


def check_tls_files(settings):
    """Load the TLS files as kazoo will, just before connecting: a wrong file is then named as such.

    Without this a CA file that is not PEM, a key without its certificate or a key that does not match
    shows up only as "no ZooKeeper server answered" after the connect timeout. Raises ConfigError naming
    the options (the one check of ``_tls.tls_problems``); never shows the key or its password.
    """
    if not settings.get("tls"):
        return
    options = {"ca_cert": "tls_ca_cert", "cert": "tls_client_cert", "key": "tls_client_key",
               "key_password": "tls_client_key_password"}
    problems = _tls.tls_problems(dict((field, settings.get(option)) for field, option in options.items()), options)
    if problems:
        raise _config.ConfigError(" ".join(problems))


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
