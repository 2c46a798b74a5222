# -*- coding: utf-8 -*-
"""A threaded TCP proxy on 127.0.0.1 that can be frozen, to simulate a network partition.

freeze() stops moving bytes in both directions without closing anything: what either side sends stays in
the kernel's socket buffers (the proxy stops reading), so the client hears nothing and the server hears
nothing, exactly as when a link silently drops packets. thaw() moves the held bytes on. Connections
accepted while frozen are held too: the upstream connection is made only after thaw(). close() ends it all.

RequestProxy is a TCPProxy to ZooKeeper that reads the client's requests and breaks the connection at the Nth
request of one opcode (before forwarding it, just after, or once the server's answer to it came back). What it
waits for is a Trigger, which can be set and replaced while the proxy runs, and shared by several proxies (the
soak run's nodes: the Nth write a node sends to any server).
"""

import select
import socket
import struct
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
        """Close every current connection (both sides see the connection end); return how many there were."""
        with self._lock:
            conns, self._conns = self._conns, []
        for pair in conns:
            for s in pair:
                _close(s)
        return len(conns)

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
            relay = self._relay(client, upstream)
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
                        if not relay(s, data):
                            return
                    except OSError:
                        return
        finally:
            with self._lock:
                if pair in self._conns:
                    self._conns.remove(pair)
            for s in pair:
                _close(s)

    def _relay(self, client, upstream):
        """relay(source, data): pass on what one side of a connection sent (False: end the connection)."""
        other = {client: upstream, upstream: client}

        def relay(source, data):
            other[source].sendall(data)
            return True

        return relay


class Trigger:
    """When a RequestProxy breaks a connection: at the ``nth`` request with one of ``opcodes`` that a client sends,
    counted over all the connections of every proxy that shares this trigger (a connection's first frame, the
    ConnectRequest, has no xid nor opcode and is never counted). It fires once, ``when``:

    - ``"before"``: the request is not forwarded (it never lands);
    - ``"after"``: it is forwarded, and the connection is broken 0.1 s later, nothing else passed on meanwhile (it
      lands, and its answer dies with the connection);
    - ``"answer"``: it is forwarded, the server's frames are passed on until its answer (told by its xid), which is
      dropped, and the connection with it (it landed, and the client cannot know); after 5 s without the answer
      the connection is broken all the same.

    ``fired`` is the time.time() at which the request was seen (None until then) and ``opcode`` its opcode,
    ``dropped_answer`` the time at which its answer was dropped (``"answer"``).
    """

    WHEN = ("before", "after", "answer")

    def __init__(self, opcodes, nth=1, when="before"):
        if when not in self.WHEN:
            raise ValueError("when: one of %s, not %r" % (", ".join(self.WHEN), when))
        self.opcodes = frozenset(opcodes)
        self.nth, self.when = nth, when
        self.seen = 0
        self.fired = None
        self.opcode = None
        self.dropped_answer = None
        self._lock = threading.Lock()

    def hit(self, opcode):
        """Count a request; True for the one to act on (once)."""
        if opcode not in self.opcodes:
            return False
        with self._lock:
            if self.fired is not None:
                return False
            self.seen += 1
            if self.seen >= self.nth:
                self.fired = time.time()
                self.opcode = opcode
                return True
        return False


class RequestProxy(TCPProxy):
    """A TCPProxy to ZooKeeper that breaks a connection as its ``trigger`` says (see Trigger). ``RequestProxy(port,
    opcode, nth, when)`` makes a trigger of its own; ``RequestProxy(port)`` has none until ``trigger`` is set (None:
    every request passes). Both streams are cut into whole frames (a 4-byte length, then the frame) and passed on
    frame by frame. ``fired`` and ``dropped_answer`` are the trigger's; ``accepted`` counts the connections (the
    client's reconnects). The rest is TCPProxy's: ``hosts``, ``close()``, ``drop_connections()``, and
    freeze()/thaw(), which the wait for an answer does not heed.
    """

    WHEN = Trigger.WHEN

    def __init__(self, target_port, opcode=None, nth=1, when="before", target_host="127.0.0.1", trigger=None):
        self.trigger = trigger if trigger is not None or opcode is None else Trigger([opcode], nth, when)
        super().__init__(target_port, target_host=target_host)

    @property
    def fired(self):
        return self.trigger.fired if self.trigger is not None else None

    @property
    def dropped_answer(self):
        return self.trigger.dropped_answer if self.trigger is not None else None

    def _relay(self, client, upstream):
        buffers = {client: b"", upstream: b""}
        handshake = True

        def relay(source, data):
            nonlocal handshake
            frames, buffers[source] = _frames(buffers[source] + data)
            for frame in frames:
                if source is upstream:
                    client.sendall(frame)
                    continue
                trigger = self.trigger
                if handshake:  # the ConnectRequest has no xid nor opcode
                    handshake = False
                elif trigger is not None and len(frame) >= 12 and trigger.hit(struct.unpack(">i", frame[8:12])[0]):
                    self._act(trigger, frame, client, upstream, buffers[upstream])
                    return False
                upstream.sendall(frame)
            return True

        return relay

    def _act(self, trigger, frame, client, upstream, from_server):
        """What to do with the request ``frame`` before the connection is broken."""
        if trigger.when == "before":
            return
        upstream.sendall(frame)
        if trigger.when == "after":
            time.sleep(0.1)  # the server applies it; its answer dies with the connection
        else:
            self._drop_answer(trigger, client, upstream, struct.unpack(">i", frame[4:8])[0], from_server)

    @staticmethod
    def _drop_answer(trigger, client, upstream, xid, pending):
        """Pass the server's frames on (``pending``: what came before) until the answer to ``xid``, which is dropped."""
        deadline = time.monotonic() + 5
        while True:
            frames, pending = _frames(pending)
            for frame in frames:
                if struct.unpack(">i", frame[4:8])[0] == xid:
                    trigger.dropped_answer = time.time()
                    return
                client.sendall(frame)
            if time.monotonic() >= deadline:
                return
            try:
                if not select.select([upstream], [], [], 0.1)[0]:
                    continue
            except ValueError:  # closed by close()
                return
            data = upstream.recv(65536)
            if not data:
                return
            pending += data


def _frames(buffer):
    """(complete frames, rest) of a byte stream of 4-byte length-prefixed frames."""
    frames = []
    while len(buffer) >= 4:
        size = struct.unpack(">i", buffer[:4])[0]
        if len(buffer) < 4 + size:
            break
        frames.append(buffer[:4 + size])
        buffer = buffer[4 + size:]
    return frames, buffer


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
