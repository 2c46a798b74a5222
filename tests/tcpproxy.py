# -*- coding: utf-8 -*-
"""A threaded TCP proxy on 127.0.0.1 that can be frozen, to simulate a network partition.

freeze() stops moving bytes in both directions without closing anything: what either side sends stays in
the kernel's socket buffers (the proxy stops reading), so the client hears nothing and the server hears
nothing, exactly as when a link silently drops packets. thaw() moves the held bytes on. Connections
accepted while frozen are held too: the upstream connection is made only after thaw(). close() ends it all.
"""

import select
import socket
import threading
import time


class TCPProxy:
    def __init__(self, target_port, target_host="127.0.0.1", listen_port=0):
        self.target = (target_host, target_port)
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", listen_port))
        self._listener.listen(64)
        self._listener.settimeout(0.1)
        self.port = self._listener.getsockname()[1]
        self._thawed = threading.Event()
        self._thawed.set()
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._conns = []  # [client, upstream or None]
        self._threads = []
        self.accepted = 0
        self.frozen_at = None
        self._accept_thread = threading.Thread(target=self._accept_loop, name="tcpproxy-accept", daemon=True)
        self._accept_thread.start()

    @property
    def hosts(self):
        return "127.0.0.1:%d" % self.port

    @property
    def frozen(self):
        return not self._thawed.is_set()

    def freeze(self):
        """Stop forwarding in both directions; return the time.time() at which it took effect."""
        self._thawed.clear()
        self.frozen_at = time.time()
        return self.frozen_at

    def thaw(self):
        self._thawed.set()
        self.frozen_at = None

    def drop_connections(self):
        """Close every current connection (both sides see the connection end)."""
        with self._lock:
            conns, self._conns = self._conns, []
        for pair in conns:
            for s in pair:
                _close(s)

    def close(self):
        self._closed.set()
        self._thawed.set()  # wake the pumps so they see _closed
        _close(self._listener)
        self.drop_connections()
        for t in [self._accept_thread] + self._threads:
            t.join(2)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # --- internals -----------------------------------------------------------------------------------

    def _accept_loop(self):
        while not self._closed.is_set():
            try:
                client, dummy_addr = self._listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            self.accepted += 1
            pair = [client, None]
            with self._lock:
                self._conns.append(pair)
            t = threading.Thread(target=self._pump, args=(pair,), name="tcpproxy-pump", daemon=True)
            self._threads.append(t)
            t.start()

    def upstream_connections(self):
        """How many accepted connections are connected through to the target."""
        with self._lock:
            return sum(1 for pair in self._conns if pair[1] is not None)

    def _wait_thawed(self):
        while not self._thawed.wait(0.05):
            if self._closed.is_set():
                return False
        return not self._closed.is_set()

    def _pump(self, pair):
        client = pair[0]
        try:
            if not self._wait_thawed():
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                return
            pair[1] = upstream
            other = {client: upstream, upstream: client}
            while not self._closed.is_set():
                if not self._wait_thawed():
                    return
                try:
                    readable, dummy_w, dummy_x = select.select([client, upstream], [], [], 0.05)
                except (OSError, ValueError):
                    return
                for s in readable:
                    # Frozen between select() and here: leave the bytes where they are.
                    if not self._wait_thawed():
                        return
                    try:
                        data = s.recv(65536)
                    except OSError:
                        data = b""
                    if not data:
                        return
                    if not self._wait_thawed():
                        return
                    try:
                        other[s].sendall(data)
                    except OSError:
                        return
        finally:
            with self._lock:
                if pair in self._conns:
                    self._conns.remove(pair)
            for s in pair:
                _close(s)


def _close(s):
    if s is None:
        return
    try:
        s.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    try:
        s.close()
    except OSError:
        pass
