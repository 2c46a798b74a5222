# -*- coding: utf-8 -*-
# Copyright: zoo-locked maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Settings shared by the runner and the modules: names, defaults, validation, precedence.

Private to the collection (the leading underscore): no stability promise outside it. Only the standard
library is imported here, so the runner starts fast and the modules' import guard stays meaningful.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import math
import os
import re

DEFAULT_CONFIG_FILE = "/etc/zoo-locked/zoo-locked.conf"
CONFIG_SECTION = "zoo-locked"

# The settings that every entry point shares, with their defaults.
DEFAULTS = {
    "hosts": "127.0.0.1:2181",
    "root": "/zoo-locked",
    "session_timeout": 10.0,
    "connect_timeout": 5.0,
}

# Security settings: from the config file or the environment, never from the command line (ps shows it).
SECURITY_DEFAULTS = {
    "auth": None,  # "digest:USER:PASSWORD" or "sasl:USER:PASSWORD"
    "tls": False,
    "tls_ca_cert": None,
    "tls_client_cert": None,
    "tls_client_key": None,
    "tls_client_key_password": None,
    "tls_validate_certs": True,
}
# Settings only the runner uses; the config file may set them too.
RUNNER_DEFAULTS = {
    "metrics_dir": None,
}
FILE_KEYS = dict(DEFAULTS, **RUNNER_DEFAULTS)
FILE_KEYS.update(SECURITY_DEFAULTS)
# digest: ZooKeeper's digest scheme (the password goes to the server, so use TLS). sasl: SASL DIGEST-MD5 against the
# servers' JAAS users (challenge-response; needs the pure-sasl library, a runner dependency).
AUTH_SCHEMES = ("digest", "sasl")

# Environment variables, and the setting each one sets.
ENVIRONMENT = {
    "ZOO_LOCKED_HOSTS": "hosts",
    "ZOO_LOCKED_ROOT": "root",
    "ZOO_LOCKED_SESSION_TIMEOUT": "session_timeout",
    "ZOO_LOCKED_CONNECT_TIMEOUT": "connect_timeout",
    "ZOO_LOCKED_AUTH": "auth",
}

# ZooKeeper itself refuses session timeouts outside [2, 20] ticks; these bounds only catch nonsense.
TIMEOUT_BOUNDS = {
    "session_timeout": (1.0, 600.0),
    "connect_timeout": (0.1, 600.0),
}

# The kill path's timing, in shares of the session timeout T that the servers granted (docs/architecture.md,
# "The bound"). The guard asks the leader (a sync, then a read) every HEARTBEAT_SHARE x T; with no such answer
# for TERM_SHARE x T, COMMAND is sent SIGTERM, and at KILL_SHARE x T SIGKILL, by the runner and, should the
# runner be stopped, stuck or dead, by its guardian. KILL_LANDING is the time allowed for that SIGKILL to land.
HEARTBEAT_SHARE = 0.1
TERM_SHARE = 0.5
KILL_SHARE = 0.75
KILL_LANDING = 0.25


def min_session_timeout(tick_time_ms):
    """The shortest runner session timeout (seconds) that is safe with the servers' tickTime (milliseconds).

    A follower reports the sessions it has heard from to the leader, which alone expires sessions, once per
    ping (every tickTime / 2), so the leader may expire a session up to tickTime / 2 + one heartbeat earlier than
    the last answer its runner counts from. COMMAND must be dead before that:
    KILL_SHARE x T + KILL_LANDING <= T - tickTime / 2 - HEARTBEAT_SHARE x T.
    """
    return (tick_time_ms / 2000.0 + KILL_LANDING) / (1.0 - HEARTBEAT_SHARE - KILL_SHARE)


def session_safety_problem(session_timeout, tick_time_ms, where="session_timeout"):
    """A message when a runner session timeout is unsafe with the servers' tickTime, else None."""
    lowest = min_session_timeout(tick_time_ms)
    if float(session_timeout) < lowest:
        return ("%s: %gs is too short for servers with tickTime %dms: the leader may expire a session up to "
                "tickTime/2 + a heartbeat (%s x T) before its runner could know, and COMMAND must be dead %gs before "
                "that; use at least %.1fs (T >= (tickTime/2 + %g) / %g), or a shorter tickTime"
                % (where, float(session_timeout), int(tick_time_ms), HEARTBEAT_SHARE, KILL_LANDING,
                   math.ceil(lowest * 10) / 10.0, KILL_LANDING, round(1.0 - HEARTBEAT_SHARE - KILL_SHARE, 3)))
    return None


LOCK_NAME_MAX = 100
_LOCK_NAME = re.compile(r"\A[A-Za-z0-9_-][A-Za-z0-9._-]{0,%d}\Z" % (LOCK_NAME_MAX - 1))
_HOST_PORT = re.compile(r"\A(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+)(?::([0-9]{1,5}))?\Z")
_ROOT = re.compile(r"\A(?:/[A-Za-z0-9._-]+)+\Z")


class ConfigError(Exception):
    """A setting is wrong: the message names where it came from and how to fix it."""


def check_lock_name(name):
    """Return an error message for a bad lock name, or None when the name is fine."""
    if not isinstance(name, str) or not _LOCK_NAME.match(name) or name in (".", ".."):
        shown = name if isinstance(name, str) and len(name) <= 120 else repr(name)[:60] + "..."
        return (
            "bad lock name %r: use 1-%d characters of A-Z a-z 0-9 . _ - , not starting with '.'"
            % (shown, LOCK_NAME_MAX)
        )
    return None


def check_hosts(value, where):
    hosts = [h.strip() for h in str(value).split(",")]
    if not value or not all(hosts):
        raise ConfigError("%s: hosts must be a comma-separated list of HOST[:PORT], got %r" % (where, value))
    for host in hosts:
        m = _HOST_PORT.match(host)
        if not m or (m.group(1) and not 0 < int(m.group(1)) < 65536):
            raise ConfigError(
                "%s: %r is not HOST[:PORT] (e.g. zk1.example.com:2181); hosts are comma-separated" % (where, host)
            )
    return ",".join(hosts)


def check_root(value, where):
    value = str(value)
    if not _ROOT.match(value) or "/./" in value + "/" or "/../" in value + "/":
        raise ConfigError(
            "%s: root must be an absolute ZooKeeper path like /zoo-locked (segments of A-Z a-z 0-9 . _ -, "
            "no trailing slash, no . or ..), got %r" % (where, value)
        )
    return value


def check_seconds(value, where, low=0.0, high=None):
    """A non-negative number of seconds (int, float or a string of one)."""
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise ConfigError("%s: expected a number of seconds, got %r" % (where, value))
    if math.isnan(seconds) or seconds in (float("inf"), float("-inf")):
        raise ConfigError("%s: expected a finite number of seconds, got %r" % (where, value))
    if seconds < low or (high is not None and seconds > high):
        bounds = "at least %g" % low if high is None else "between %g and %g" % (low, high)
        raise ConfigError("%s: must be %s seconds, got %r" % (where, bounds, value))
    return seconds


def check_auth(value, where):
    """[(scheme, credential)] for kazoo from "digest:USER:PASSWORD" or "sasl:USER:PASSWORD".

    The message never shows the secret.
    """
    scheme, dummy_sep, credential = str(value).partition(":")
    user, dummy_sep, password = credential.partition(":")
    if scheme not in AUTH_SCHEMES or not user or not password:
        raise ConfigError(
            "%s: expected digest:USER:PASSWORD or sasl:USER:PASSWORD (USER without ':'; the value is not shown "
            "here because it may hold a password)" % where
        )
    return [(scheme, credential)]


def check_bool(value, where):
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ConfigError("%s: expected true or false, got %r" % (where, value))


def check_file(value, where):
    value = str(value)
    if not value.startswith("/"):
        raise ConfigError("%s: must be an absolute file path, got %r" % (where, value))
    if not os.path.isfile(value) or not os.access(value, os.R_OK):
        raise ConfigError("%s: %s is not a readable file" % (where, value))
    return value


# Owner and purpose are stored in the lock node and shown on one line by `zoo-locked status`; ZooKeeper drops
# the connection of a client that writes a node of more than about 1 MB.
TEXT_LIMITS = {"owner": 200, "purpose": 1000}


def check_text(value, key, where, one_line=True):
    """Owner or purpose: at most TEXT_LIMITS[key] characters; with one_line, no control characters."""
    limit = TEXT_LIMITS[key]
    if len(value) > limit:
        raise ConfigError("%s: at most %d characters, got %d; shorten it" % (where, limit, len(value)))
    controls = sorted(set("%r" % c for c in value if ord(c) < 32 or ord(c) == 127)) if one_line else []
    if controls:
        raise ConfigError("%s: control characters (%s) are not allowed; write it on one line, got %r"
                          % (where, ", ".join(controls), value[:60]))
    return value


def check_setting(key, value, where):
    if key == "hosts":
        return check_hosts(value, where)
    if key == "root":
        return check_root(value, where)
    if key == "auth":
        return check_auth(value, where)
    if key == "tls_client_key_password":
        return str(value)
    if key in ("tls", "tls_validate_certs"):
        return check_bool(value, where)
    if key in ("tls_ca_cert", "tls_client_cert", "tls_client_key"):
        return check_file(value, where)
    if key == "metrics_dir":
        value = str(value)
        if not value.startswith("/"):
            raise ConfigError("%s: must be an absolute directory path, got %r" % (where, value))
        if any(ord(char) < 32 or 127 <= ord(char) < 160 for char in value):
            raise ConfigError("%s: must be a directory path without control characters, got %r" % (where, value))
        return value
    low, high = TIMEOUT_BOUNDS[key]
    return check_seconds(value, where, low, high)


def read_config_file(path, required):
    """Settings from an INI file with one [zoo-locked] section; {} when it is absent and not required."""
    try:
        with open(path, "r") as handle:
            text = handle.read()
    except (IOError, OSError) as exc:
        if not required and getattr(exc, "errno", None) == 2:
            return {}
        raise ConfigError("config file %s: cannot read it (%s)" % (path, exc.strerror or exc))
    try:
        import configparser
    except ImportError:  # pragma: no cover - Python 2 is not supported by the runner
        raise ConfigError("config file %s: Python 3 is required" % path)
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read_string(text, source=path)
    except configparser.Error as exc:
        raise ConfigError("config file %s: not a valid INI file: %s" % (path, str(exc).splitlines()[0]))
    extra = [s for s in parser.sections() if s != CONFIG_SECTION]
    if extra or not parser.has_section(CONFIG_SECTION):
        raise ConfigError(
            "config file %s: expected exactly one section [%s]%s"
            % (path, CONFIG_SECTION, ", found [%s]" % "], [".join(extra) if extra else "")
        )
    settings = {}
    if parser.has_option(CONFIG_SECTION, "auth") or parser.has_option(CONFIG_SECTION, "tls_client_key_password"):
        mode = os.stat(path).st_mode
        if mode & 0o007:
            raise ConfigError(
                "config file %s holds secrets (auth or tls_client_key_password) but other users may read it (mode %04o): "
                "chmod o-rwx %s (the runner role installs it as 0640 root:zoo-locked)" % (path, mode & 0o7777, path)
            )
    for key, value in parser.items(CONFIG_SECTION):
        if key not in FILE_KEYS:
            raise ConfigError(
                "config file %s: unknown key %r in [%s]; known keys: %s"
                % (path, key, CONFIG_SECTION, ", ".join(sorted(FILE_KEYS)))
            )
        settings[key] = check_setting(key, value, "config file %s: %s" % (path, key))
    return settings


def resolve(flags, environ=None):
    """Settings by precedence: defaults, then the config file, then the environment, then flags.

    ``flags`` maps setting names to values given on the command line (None when not given), plus
    ``config`` for --config. Raises ConfigError for anything wrong in the file or the environment.
    """
    environ = os.environ if environ is None else environ
    settings = dict(FILE_KEYS)
    path = flags.get("config") or environ.get("ZOO_LOCKED_CONFIG")
    settings.update(read_config_file(path or DEFAULT_CONFIG_FILE, required=bool(path)))
    for variable, key in ENVIRONMENT.items():
        value = environ.get(variable)
        if value is not None and value != "":
            settings[key] = check_setting(key, value, "environment variable %s" % variable)
    for key in FILE_KEYS:
        if flags.get(key) is not None:
            settings[key] = flags[key]
    settings["config"] = path
    return settings
