# -*- coding: utf-8 -*-
# Copyright: zoo-locked maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""One ZooKeeper connection helper for the runner and the modules.

Every call that talks to ZooKeeper is bounded here: kazoo's synchronous calls wait for as long as the
client is reconnecting, and ``KazooClient.stop()`` can block for ten seconds or more while no server
answers. A lock tool that hangs when ZooKeeper is gone is worse than one that fails.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import logging
import threading
import time

try:
    from kazoo.client import KazooClient
    from kazoo.handlers.threading import KazooTimeoutError
    from kazoo.exceptions import AuthFailedError, NoAuthError, NoChildrenForEphemeralsError
    from kazoo.retry import KazooRetry
    from kazoo.security import make_acl, make_digest_acl

    from kazoo.protocol.connection import PURESASL_AVAILABLE

    HAS_KAZOO = True
    KAZOO_IMPORT_ERROR = None
except ImportError as exc:  # the modules report this with missing_required_lib()
    HAS_KAZOO = False
    PURESASL_AVAILABLE = False
    KAZOO_IMPORT_ERROR = exc


class ZooError(Exception):
    """ZooKeeper did not do what was asked in time; the message says what and where."""


class ZooUnavailable(ZooError):
    """No ZooKeeper server could be reached within the connect timeout."""


class ZooRefused(ZooError):
    """ZooKeeper refused a request because of how zoo-locked is configured (credentials, root path)."""


class ZooAuthFailed(ZooRefused):
    """ZooKeeper refused the credentials."""


def tls_options(settings):
    """kazoo's TLS arguments from the settings (tls, tls_ca_cert, ...), or None without TLS."""
    if not settings.get("tls"):
        return None
    return {
        "ca": settings.get("tls_ca_cert"),
        "certfile": settings.get("tls_client_cert"),
        "keyfile": settings.get("tls_client_key"),
        "keyfile_password": settings.get("tls_client_key_password"),
        "verify_certs": settings.get("tls_validate_certs", True) is not False,
    }


def pinned_tls_connection(address, hostname=None, timeout=None, use_ssl=True, ca=None, certfile=None, keyfile=None,
                          keyfile_password=None, verify_certs=True, check_hostname=False, **dummy_kwargs):
    """A TLS connection to a server whose certificate the CA file ``ca`` alone vouches for.

    kazoo's handler (2.11) loads the system's default CA store before ``ca``, so a server certified by any CA the
    system trusts would pass. This is kazoo's TLS connect (same arguments, the same client certificate rule)
    with a context that trusts ``ca`` only, and TLS 1.2 at least.
    """
    import socket
    import ssl

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = check_hostname  # before verify_mode: CERT_NONE needs it off
    context.verify_mode = ssl.CERT_REQUIRED if verify_certs else ssl.CERT_NONE
    context.load_verify_locations(cafile=ca)
    if certfile and keyfile:
        context.load_cert_chain(certfile=certfile, keyfile=keyfile, password=keyfile_password)
    family = socket.getaddrinfo(address[0], address[1], 0, socket.SOCK_STREAM)[0][0]
    sock = context.wrap_socket(socket.socket(family), server_hostname=hostname)
    try:
        sock.settimeout(timeout)
        sock.connect(address)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except BaseException:
        sock.close()
        raise
    return sock


def _credential(auth):
    """(scheme, user, password) of the first digest or sasl credential, or None."""
    for scheme, credential in auth or ():
        if scheme in ("digest", "sasl"):
            user, dummy_sep, password = credential.partition(":")
            return scheme, user, password
    return None


def identity(auth):
    """The cluster's ZooKeeper identity from the credentials: ("digest", USER), ("sasl", USER), or None."""
    found = _credential(auth)
    return found[:2] if found else None


def lock_tree_acl(auth):
    """The ACL of everything zoo-locked creates: ALL for the cluster's identity, READ for anyone.

    None (ZooKeeper's open ACL) when no credentials are set. A digest identity is USER plus the hash of the
    password; a SASL identity is the user name the servers authenticated (their JAAS users).
    """
    found = _credential(auth)
    if found is None:
        return None
    scheme, user, password = found
    ours = make_digest_acl(user, password, all=True) if scheme == "digest" else make_acl("sasl", user, all=True)
    return [ours, make_acl("world", "anyone", read=True)]


def kazoo_auth(auth):
    """kazoo's (auth_data, sasl_options) from the credentials: digest goes as auth data, sasl as SASL DIGEST-MD5."""
    auth_data, sasl_options = [], None
    for scheme, credential in auth or ():
        if scheme == "sasl":
            user, dummy_sep, password = credential.partition(":")
            sasl_options = {"mechanism": "DIGEST-MD5", "username": user, "password": password}
        else:
            auth_data.append((scheme, credential))
    return auth_data or None, sasl_options


def quiet_kazoo(verbose=False):
    """kazoo logs connection drops as warnings; the runner reports them as its own events instead."""
    logger = logging.getLogger("kazoo")
    if verbose:
        if not logging.getLogger().handlers:
            logging.basicConfig(level=logging.INFO, format="zoo-locked: kazoo %(levelname)s %(message)s")
    else:
        logger.addHandler(logging.NullHandler())
        logger.propagate = False


class Session:
    """A kazoo client with bounded calls, and the session timeout the server really granted.

    The server may grant a shorter session timeout than the one asked for (it clamps it to its
    minSessionTimeout..maxSessionTimeout). kazoo computes but does not keep the granted value, so the
    connection handler's ``_connect`` is wrapped to record it: the session guard must count with the
    timeout the server will enforce. Tested against the pinned kazoo in tests/runner.
    """

    def __init__(self, hosts, session_timeout, connect_timeout, auth=None, tls=None):
        if not HAS_KAZOO:
            raise ZooError("the Python library kazoo is not installed: %s" % KAZOO_IMPORT_ERROR)
        self.hosts = hosts
        self.requested_timeout = float(session_timeout)
        self.connect_timeout = float(connect_timeout)
        self.negotiated_timeout = None
        self.acl = lock_tree_acl(auth)
        self.identity = identity(auth)
        auth_data, sasl_options = kazoo_auth(auth)
        self.sasl = sasl_options is not None
        if sasl_options is not None and not PURESASL_AVAILABLE:
            raise ZooRefused("auth sasl:USER:PASSWORD needs the Python library pure-sasl, which is not installed: "
                             "install the runner's requirements (requirements/runner.txt), or use digest auth")
        tls = dict(tls or {})
        self.tls = bool(tls)
        if tls:
            # Hostnames are checked whenever certificates are: a CA-signed certificate of any host would do
            # otherwise. Certificates must then name the servers as `hosts` does.
            tls.update(use_ssl=True, check_hostname=tls.get("verify_certs", True))
        # Reconnect quickly after a blip: the session (and with it the lock) survives only if we are back
        # on a server before it expires, so the back-off must stay well under the session timeout.
        retry = KazooRetry(
            max_tries=-1, delay=0.05, backoff=2, max_jitter=0.1, max_delay=max(0.2, min(1.0, session_timeout / 10.0))
        )
        self.client = KazooClient(
            hosts=hosts,
            timeout=self.requested_timeout,
            connection_retry=retry,
            command_retry=None,
            auth_data=auth_data,
            sasl_options=sasl_options,
            default_acl=self.acl,
            **tls
        )
        connection = self.client._connection
        original = connection._connect

        self.auth_refused = False

        def _connect(host, hostip, port):
            try:
                read_timeout, connect_timeout = original(host, hostip, port)
            except AuthFailedError:
                # Noted here, where it happens: kazoo's state goes AUTH_FAILED, then at once CLOSED when its
                # connection thread ends, and start() may look only after that.
                self.auth_refused = True
                raise
            # kazoo sets read_timeout to 2/3 of the negotiated session timeout (in milliseconds). Each reconnect
            # negotiates again, with a server whose bounds may differ: the shortest value granted is the one
            # counted with, since the leader may enforce any of them.
            granted = read_timeout * 1.5 / 1000.0
            self.negotiated_timeout = min(granted, self.negotiated_timeout or granted)
            return read_timeout, connect_timeout

        connection._connect = _connect
        # kazoo gives each server's TCP (and TLS) connect the whole session timeout: one server that went
        # silent (its machine died) would use up the session before the next one is tried. A quarter of it
        # (at least 1 s) leaves time for the other servers; the session's own handshake stays kazoo's.
        handler = self.client.handler
        create_connection = handler.create_connection

        def capped_create_connection(*args, **kwargs):
            if kwargs.get("timeout") is not None:
                kwargs["timeout"] = min(kwargs["timeout"], max(1.0, self.session_timeout / 4.0))
            if kwargs.get("use_ssl") and kwargs.get("ca"):  # tls_ca_cert pins the CA (kazoo adds the system's)
                return pinned_tls_connection(*args, **kwargs)
            return create_connection(*args, **kwargs)

        handler.create_connection = capped_create_connection

    @property
    def session_id(self):
        """The id of the session kazoo holds, also while it reconnects (``client_id`` says None then); another one
        after kazoo opened a new session by itself once the old one expired. Private kazoo state (kazoo is pinned)."""
        return getattr(self.client, "_session_id", None)

    @property
    def session_timeout(self):
        """The session timeout the servers enforce: the shortest they granted (the requested one until connected)."""
        return self.negotiated_timeout or self.requested_timeout

    def start(self):
        # Not client.start(timeout): on a time-out it calls stop() itself, which waits up to ten seconds for
        # a connection thread stuck in a handshake with a server that accepts but never answers.
        from kazoo.protocol.states import KeeperState

        started = time.monotonic()
        connected = self.client.start_async()
        connected.wait(self.connect_timeout)
        refused = False
        if self.client.connected and self.sasl:
            # kazoo reports the session connected before its SASL exchange, and a server that refuses the
            # password then drops the connection. One round trip, queued behind the exchange, tells which.
            try:
                self.client.exists_async("/").get(timeout=max(0.001, self.connect_timeout - (time.monotonic() - started)))
            except AuthFailedError:
                refused = True
            except Exception:  # no answer in time: "not connected" below
                pass
        if refused or self.auth_refused or self.client.client_state == KeeperState.AUTH_FAILED:
            self.close(timeout=1.0)
            raise ZooAuthFailed("ZooKeeper (%s) refused the credentials (auth): check the user and password%s" % (
                self.hosts, ", and that the servers have this user in their JAAS Server section (sasl)" if self.sasl
                else ""))
        if not self.client.connected:
            self.close(timeout=1.0)
            raise ZooUnavailable(
                "no ZooKeeper server of %s answered within %gs (connect timeout)%s" % (
                    self.hosts, self.connect_timeout,
                    "; TLS is on: check that the servers listen for TLS on that port, that tls_ca_cert signed "
                    "their certificates, that these name the hosts, and the client certificate if the servers "
                    "ask for one" if self.tls else "")
            )

    def call(self, what, async_result, timeout):
        """The result of a kazoo ``*_async`` call, waiting at most ``timeout`` seconds."""
        try:
            return async_result.get(timeout=max(timeout, 0.001))
        except KazooTimeoutError:
            raise ZooError("ZooKeeper did not answer %s within %.1fs" % (what, timeout))
        except (NoAuthError, AuthFailedError):
            raise ZooAuthFailed(
                "ZooKeeper refused %s: not allowed (NoAuth). The lock tree's ACL admits only the cluster's "
                "identity: set auth (digest:USER:PASSWORD or sasl:USER:PASSWORD) in the config file or ZOO_LOCKED_AUTH, and check "
                "the user and password" % what
            )
        except NoChildrenForEphemeralsError:
            raise ZooRefused(
                "ZooKeeper refused %s: a node on that path is ephemeral and cannot have children; choose a root "
                "whose parents are persistent nodes" % what
            )

    @property
    def connected(self):
        return self.client.connected

    def drop_connection(self):
        """Make kazoo leave its server now and reconnect (to the next server) within the same session.

        kazoo notices a server that went silent only after 2/3 of the session timeout without an answer
        (later still while requests keep flowing, since they count as pings), too late for a lock holder, which
        must stop its command by half the session timeout. Shutting the socket makes its connection loop see
        the connection broken at once; the session survives if another server takes it in time.
        """
        import socket

        sock = getattr(getattr(self.client, "_connection", None), "_socket", None)
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except (OSError, ValueError):
                pass  # already closed: kazoo is reconnecting anyway

    def close(self, timeout=2.0):
        """End the session (its ephemeral nodes go at once), giving up after ``timeout`` seconds.

        If no server answers, the session simply expires on the server later; the client threads are
        daemon threads and end with the process.
        """
        client = self.client

        def stop():
            try:
                client.stop()
                client.close()
            except Exception:  # nothing useful is left to do with a client that fails to stop
                pass

        worker = threading.Thread(target=stop, name="zoo-locked-close")
        worker.daemon = True
        started = time.monotonic()
        worker.start()
        worker.join(timeout)
        return time.monotonic() - started < timeout
