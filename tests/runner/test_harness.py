# -*- coding: utf-8 -*-
"""The harness itself: the ZooKeeper fixtures, the freezable proxy and the recording worker."""

import os
import socket
import subprocess
import time

from kazoo.client import KazooClient, KazooState

from zkharness import four_letter, group_alive, read_records, wait_for


def _ask(sock, word, timeout):
    sock.settimeout(timeout)
    sock.sendall(word)
    try:
        return sock.recv(100)
    except socket.timeout:
        return None


def test_shared_server_answers(zk_server, kazoo, zk):
    assert four_letter(zk_server.port, "ruok") == "imok"
    kazoo.ensure_path(zk.root + "/locks/x")
    assert kazoo.get_children(zk.root + "/locks") == ["x"]
    assert zk.root.startswith("/t/test_shared_server_answers-")


def test_short_sessions_are_allowed(zk_server):
    client = KazooClient(hosts=zk_server.hosts, timeout=1.0)
    client.start(timeout=10)
    try:
        assert client._session_timeout == 1000  # negotiated: tickTime 500 allows 1 s
    finally:
        client.stop()
        client.close()


def test_proxy_holds_bytes_while_frozen(zk_server, proxy_factory):
    proxy = proxy_factory(zk_server.port)
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=2) as s:
        assert _ask(s, b"ruok", 2) == b"imok"
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=2) as s:
        # The proxy must be connected upstream before freezing, so both directions are held.
        wait_for(lambda: proxy.upstream_connections() >= 1, 5, message="the proxy's upstream connection")
        proxy.freeze()
        assert _ask(s, b"ruok", 0.7) is None
        proxy.thaw()
        s.settimeout(2)
        assert s.recv(100) == b"imok"
    proxy.freeze()
    # A new connection is accepted while frozen, but nothing reaches the server before thaw().
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=2) as s:
        assert _ask(s, b"ruok", 0.7) is None
        proxy.thaw()
        s.settimeout(2)
        assert s.recv(100) == b"imok"


def test_frozen_proxy_partitions_a_kazoo_session(zk_server, proxy_factory, kazoo, zk):
    proxy = proxy_factory(zk_server.port)
    client = KazooClient(hosts=proxy.hosts, timeout=2.0)
    states = []
    client.add_listener(states.append)
    client.start(timeout=10)
    try:
        client.create(zk.root + "/e", ephemeral=True, makepath=True)
        frozen_at = proxy.freeze()
        wait_for(lambda: kazoo.exists(zk.root + "/e") is None, 6, message="the session to expire")
        expired_after = time.time() - frozen_at
        assert 1.5 < expired_after < 4.0, expired_after
        wait_for(lambda: KazooState.SUSPENDED in states, 3, message="kazoo to notice")
        proxy.thaw()
        wait_for(lambda: KazooState.LOST in states, 10, message="kazoo to report LOST after reconnecting")
    finally:
        proxy.thaw()
        client.stop()
        client.close()


def test_separate_server_stops_and_restarts(zk_factory, zk_server):
    server = zk_factory()
    assert server.port != zk_server.port
    server.stop()
    assert four_letter(server.port, "ruok") == ""
    server.start()
    assert four_letter(server.port, "ruok") == "imok"
    assert four_letter(zk_server.port, "ruok") == "imok"


def test_worker_records_signals_and_children(runner):
    rec, ready = runner.path("rec"), runner.path("ready")
    cmd = runner.worker(record=rec, ready=ready, sleep=30, child="ignore-term", ignore_term=True)
    proc = subprocess.Popen(cmd, start_new_session=True)
    try:
        wait_for(lambda: os.path.exists(ready), 10, message="worker ready")
        starts = [r for r in read_records(rec) if r["event"] == "start"]
        assert {r["tag"] for r in starts} == {"main", "child"}
        assert all(r["pgid"] == proc.pid for r in starts)
        os.killpg(proc.pid, 15)
        wait_for(lambda: len([r for r in read_records(rec) if r["event"] == "signal"]) == 2, 5, message="TERMs")
        assert group_alive(proc.pid)
        os.killpg(proc.pid, 9)
        wait_for(lambda: not group_alive(proc.pid), 5, message="group to die")
    finally:
        try:
            os.killpg(proc.pid, 9)
        except OSError:
            pass
        proc.wait(5)
