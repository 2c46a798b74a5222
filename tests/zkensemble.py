# -*- coding: utf-8 -*-
"""Test harness: a real ZooKeeper ensemble (three servers by default) on 127.0.0.1.

Each server has its own zoo.cfg, so one server can be made to reach the others' *quorum* ports (the
follower-to-leader link) through freezable TCP proxies (tests/tcpproxy.py), while the election ports stay
direct. Freezing those proxies cuts that server off from the leader without closing anything: the server goes
on answering its clients from its own copy of the data until ``syncLimit x tickTime`` has passed, which is the
situation the runner's guard must not be fooled by (docs/architecture.md, "Evidence through the leader").

Kept free of pytest, like zkharness.py. ``python tests/zkensemble.py`` starts an ensemble, shows who leads,
and stops it.

    ens = ZKEnsemble(workdir, tick_time=500, sync_limit=10, proxied={1})
    ens.start_with_follower(1)   # 2 and 3 first, a leader among them, then 1 joins as a follower
    ens.hosts([1])               # "127.0.0.1:<client port of server 1>"
    ens.cut_off(1)               # freeze server 1's links to the other servers' quorum ports
    ens.stop()
"""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from tcpproxy import TCPProxy  # noqa: E402
from zkharness import HarnessError, ZKServer, four_letter, free_port, wait_for  # noqa: E402
import zkharness  # noqa: E402

QUORUM_MAIN_CLASS = "org.apache.zookeeper.server.quorum.QuorumPeerMain"


def server_mode(port, timeout=1.0):
    """'leader', 'follower', 'standalone', ... from the `srvr` four-letter word; '' when not serving."""
    for line in four_letter(port, "srvr", timeout=timeout).splitlines():
        if line.startswith("Mode:"):
            return line.split(":", 1)[1].strip()
    return ""


class QuorumPeer(ZKServer):
    """One server of an ensemble: ZKServer's launcher and log handling, QuorumPeerMain and a myid file."""

    def __init__(self, workdir, sid, ensemble, **kwargs):
        ZKServer.__init__(self, workdir, tick_time=ensemble.tick_time,
                          max_session_timeout=ensemble.max_session_timeouts.get(sid, ensemble.max_session_timeout),
                          **kwargs)
        self.sid = sid
        self.ensemble = ensemble
        self.quorum_port = free_port()
        self.election_port = free_port()

    def _write_config(self):
        os.makedirs(self.datadir, exist_ok=True)
        with open(os.path.join(self.datadir, "myid"), "w") as f:
            f.write("%d\n" % self.sid)
        lines = [
            "tickTime=%d" % self.ensemble.tick_time,
            "initLimit=%d" % self.ensemble.init_limit,
            "syncLimit=%d" % self.ensemble.sync_limit,
            "dataDir=%s" % self.datadir,
            "clientPort=%d" % self.port,
            "clientPortAddress=127.0.0.1",
            "maxSessionTimeout=%d" % self.max_session_timeout,
            "maxClientCnxns=0",
            "4lw.commands.whitelist=*",
            "admin.enableServer=false",
            "reconfigEnabled=false",
            "forceSync=no",
        ]
        for peer in self.ensemble.peers.values():
            quorum_port = self.ensemble.quorum_port_seen_by(self.sid, peer.sid)
            lines.append("server.%d=127.0.0.1:%d:%d" % (peer.sid, quorum_port, peer.election_port))
        with open(self.config, "w") as f:
            f.write("\n".join(lines + [""]))

    def command(self):
        cmd = ZKServer.command(self)
        cmd[cmd.index(zkharness.MAIN_CLASS)] = QUORUM_MAIN_CLASS
        return cmd

    def launch(self):
        """Start the JVM without waiting: a lone server of an ensemble does not serve until a quorum forms."""
        if self.running():
            return self
        import subprocess

        self._write_config()
        cmd = self.command()
        self._log = open(self.logfile, "ab")
        self._log.write(("\n=== start %s: %s\n" % (time.strftime("%H:%M:%S"), " ".join(cmd))).encode())
        self._log.flush()
        env = dict(os.environ)
        env[zkharness.MARK_VAR] = "zookeeper"
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT, cwd=self.workdir,
            start_new_session=True, env=env,
        )
        zkharness._LIVE_SERVERS.add(self)  # stopped at the end of the pytest session whatever happens
        return self

    def mode(self):
        return server_mode(self.port)

    def check_alive(self):
        if self.proc is not None and self.proc.poll() is not None:
            raise HarnessError("ZooKeeper server %d exited with %s; log:\n%s"
                               % (self.sid, self.proc.returncode, self.log_tail()))

    def __repr__(self):
        return "<QuorumPeer %d %s %s>" % (self.sid, self.hosts, "running" if self.running() else "stopped")


class ZKEnsemble:
    """``size`` ZooKeeper servers on 127.0.0.1 (ids 1..size), each with free client, quorum and election ports.

    ``proxied``: ids of servers whose links to the other servers' quorum ports go through a TCPProxy each
    (``self.proxies[(sid, other)]``); their election links stay direct. ``max_session_timeouts``: {sid: ms} for
    servers whose zoo.cfg has another maxSessionTimeout than ``max_session_timeout`` (the others').
    """

    def __init__(self, workdir, size=3, tick_time=500, init_limit=10, sync_limit=10, max_session_timeout=60000,
                 proxied=(), max_session_timeouts=None):
        self.workdir = workdir
        self.tick_time = tick_time
        self.init_limit = init_limit
        self.sync_limit = sync_limit
        self.max_session_timeout = max_session_timeout
        self.max_session_timeouts = dict(max_session_timeouts or {})
        self.peers = {}
        for sid in range(1, size + 1):
            self.peers[sid] = QuorumPeer(os.path.join(workdir, "zk%d" % sid), sid, self)
        self.proxies = {}
        for sid in proxied:
            for other in self.peers:
                if other != sid:
                    self.proxies[(sid, other)] = TCPProxy(self.peers[other].quorum_port)

    def quorum_port_seen_by(self, viewer, target):
        """The port server ``viewer`` names for ``target``'s quorum port in its zoo.cfg."""
        proxy = self.proxies.get((viewer, target))
        if proxy is not None:
            return proxy.port
        return self.peers[target].quorum_port

    def __getitem__(self, sid):
        return self.peers[sid]

    def hosts(self, sids=None):
        """The connection string for the client ports of ``sids`` (default: all servers)."""
        return ",".join(self.peers[sid].hosts for sid in (sids or sorted(self.peers)))

    def modes(self):
        return {sid: peer.mode() for sid, peer in self.peers.items()}

    def leader(self):
        """The id of the server that says it leads, or None."""
        for sid, mode in self.modes().items():
            if mode == "leader":
                return sid
        return None

    def _check_alive(self, sids):
        for sid in sids:
            self.peers[sid].check_alive()

    def wait_serving(self, sids=None, timeout=60.0):
        """Wait until every server of ``sids`` answers `srvr` with a leader or follower mode."""
        sids = sorted(sids or self.peers)

        def serving():
            self._check_alive(sids)
            modes = {sid: self.peers[sid].mode() for sid in sids}
            return modes if all(m in ("leader", "follower") for m in modes.values()) else None

        try:
            return wait_for(serving, timeout, interval=0.1, message="ZooKeeper servers %s to serve" % sids)
        except AssertionError as e:
            raise HarnessError("%s; modes %s; logs:\n%s" % (e, self.modes(), self.log_tails(60)))

    def start(self, sids=None, timeout=60.0):
        """Start ``sids`` (default: all) and wait until they all serve."""
        sids = sorted(sids or self.peers)
        for sid in sids:
            self.peers[sid].launch()
        return self.wait_serving(sids, timeout)

    def start_with_follower(self, follower, timeout=60.0):
        """Start the others first, wait for a leader among them, then start ``follower``: it joins as a follower.

        Returns the modes of every server once all serve; raises HarnessError if ``follower`` does not follow.
        """
        others = [sid for sid in sorted(self.peers) if sid != follower]
        self.start(others, timeout)
        if self.leader() not in others:
            raise HarnessError("no leader among servers %s: %s" % (others, self.modes()))
        self.start([follower], timeout)
        modes = self.wait_serving(None, timeout)
        if modes[follower] != "follower":
            raise HarnessError("server %d is %s, not a follower: %s" % (follower, modes[follower], modes))
        return modes

    def cut_off(self, sid):
        """Freeze ``sid``'s links to the other servers' quorum ports (it hears nothing from the leader)."""
        frozen = [proxy.freeze() for (viewer, dummy), proxy in sorted(self.proxies.items()) if viewer == sid]
        if not frozen:
            raise HarnessError("server %d's quorum links are not proxied" % sid)
        return min(frozen)

    def heal(self, sid):
        for (viewer, dummy), proxy in self.proxies.items():
            if viewer == sid:
                proxy.thaw()

    def log_tails(self, lines=40):
        return "\n".join("--- server %d ---\n%s" % (sid, peer.log_tail(lines))
                         for sid, peer in sorted(self.peers.items()))

    def stop(self):
        for proxy in self.proxies.values():
            proxy.thaw()  # so that nothing waits on a frozen link while stopping
        for peer in self.peers.values():
            try:
                peer.kill()  # their data is thrown away: no clean shutdown needed, and it is quicker
            except Exception:  # noqa: BLE001 - best effort
                pass
        for proxy in self.proxies.values():
            proxy.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        t0 = time.monotonic()
        with ZKEnsemble(d, proxied={1}) as ens:
            print("modes %s after %.2f s" % (ens.start_with_follower(1), time.monotonic() - t0))
            print("server 1 cut off from the leader at %.3f" % ens.cut_off(1))
            time.sleep(ens.tick_time * ens.sync_limit / 1000.0 + 1)
            print("modes %s" % ens.modes())
    sys.exit(0)
