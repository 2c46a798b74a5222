"""TLS to ZooKeeper, with and without a client certificate (issue 7), against a real TLS server."""

import os
import subprocess

import pytest

from zkharness import ZKServer

NETTY = ["netty-handler", "netty-codec", "netty-buffer", "netty-common", "netty-transport", "netty-resolver",
         "netty-transport-native-epoll", "netty-transport-native-unix-common"]


def _openssl(*args):
    subprocess.run(["openssl"] + list(args), check=True, capture_output=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """A CA, a server certificate for localhost/127.0.0.1, a client certificate, and a stranger CA."""
    d = tmp_path_factory.mktemp("pki")
    for ca in ("ca", "stranger"):
        _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=%s" % ca,
                 "-keyout", str(d / ("%s.key" % ca)), "-out", str(d / ("%s.pem" % ca)))
    (d / "san.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    for who in ("server", "client"):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=%s" % who,
                 "-keyout", str(d / ("%s.key" % who)), "-out", str(d / ("%s.csr" % who)))
        _openssl("x509", "-req", "-in", str(d / ("%s.csr" % who)), "-CA", str(d / "ca.pem"),
                 "-CAkey", str(d / "ca.key"), "-CAcreateserial", "-days", "2", "-extfile", str(d / "san.ext"),
                 "-out", str(d / ("%s.crt" % who)))
    (d / "server.pem").write_text((d / "server.key").read_text() + (d / "server.crt").read_text())
    return d


class TLSServer(ZKServer):
    """A ZooKeeper server that speaks TLS only (Netty, PEM key store and trust store)."""

    def __init__(self, workdir, pki, client_auth):
        classpath = ["/usr/share/java/zookeeper.jar", "/usr/share/java/slf4j-simple.jar"]
        classpath += ["/usr/share/java/%s.jar" % jar for jar in NETTY]
        ZKServer.__init__(self, workdir, classpath=classpath)
        self.pki = pki
        self.client_auth = client_auth

    def _write_config(self):
        ZKServer._write_config(self)
        plain_port = self.port
        with open(self.config) as f:
            text = f.read().replace("clientPort=%d" % plain_port, "secureClientPort=%d" % plain_port)
            text = text.replace("clientPortAddress=", "secureClientPortAddress=")
        text += "\n".join([
            "serverCnxnFactory=org.apache.zookeeper.server.NettyServerCnxnFactory",
            "ssl.keyStore.location=%s" % (self.pki / "server.pem"),
            "ssl.keyStore.type=PEM",
            "ssl.trustStore.location=%s" % (self.pki / "ca.pem"),
            "ssl.trustStore.type=PEM",
            "ssl.clientAuth=%s" % self.client_auth,
            "",
        ])
        with open(self.config, "w") as f:
            f.write(text)

    def start(self, timeout=30.0):
        # The harness's readiness check speaks plain text; a TLS port answers only after a handshake.
        import socket
        import ssl
        import time

        self._write_config()
        self.proc = subprocess.Popen(self.command(), stdout=open(self.logfile, "ab"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        context = ssl.create_default_context(cafile=str(self.pki / "ca.pem"))
        context.load_cert_chain(str(self.pki / "client.crt"), str(self.pki / "client.key"))
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as raw:
                    with context.wrap_socket(raw, server_hostname="localhost"):
                        return self
            except OSError:
                time.sleep(0.2)
        raise AssertionError("the TLS ZooKeeper did not start: see %s" % self.logfile)


@pytest.fixture(scope="module", params=["none", "need"])
def tls_server(request, tmp_path_factory, pki):
    server = TLSServer(str(tmp_path_factory.mktemp("tlszk")), pki, request.param)
    server.start()
    yield server
    server.stop()


def _config(tmp_path, port, **keys):
    lines = ["[zoo-locked]", "hosts = localhost:%d" % port, "tls = true"]
    lines += ["%s = %s" % item for item in keys.items()]
    path = tmp_path / "tls.conf"
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o600)
    return str(path)


def test_runs_over_tls(runner, tls_server, pki, tmp_path):
    keys = {"tls_ca_cert": pki / "ca.pem"}
    if tls_server.client_auth == "need":
        keys.update(tls_client_cert=pki / "client.crt", tls_client_key=pki / "client.key")
    config = _config(tmp_path, tls_server.port, **keys)
    marker = runner.path("ran")
    result = runner.raw(["run", "tls-job", "--root", "/tls", "--config", config, "--", "touch", marker])
    assert result.returncode == 0, result
    assert os.path.exists(marker)


def test_tls_refuses_an_unknown_server_or_a_missing_client_certificate(runner, tls_server, pki, tmp_path):
    marker = runner.path("ran")
    cases = [{"tls_ca_cert": pki / "stranger.pem"}]  # a server our CA did not sign
    if tls_server.client_auth == "need":
        cases.append({"tls_ca_cert": pki / "ca.pem"})  # no client certificate
    for keys in cases:
        config = _config(tmp_path, tls_server.port, **keys)
        result = runner.raw(["run", "tls-job", "--root", "/tls", "--config", config, "--connect-timeout", "2",
                             "--", "touch", marker])
        assert result.returncode == 69, (keys, result)
        assert "TLS is on" in result.stderr
        assert not os.path.exists(marker)


def test_plain_client_cannot_talk_to_a_tls_port(runner, tls_server):
    marker = runner.path("ran")
    result = runner.raw(["run", "tls-job", "--hosts", "127.0.0.1:%d" % tls_server.port, "--root", "/tls",
                         "--connect-timeout", "2", "--", "touch", marker])
    assert result.returncode == 69 and not os.path.exists(marker), result


def test_tls_ca_cert_pins_the_ca_even_if_the_system_trusts_the_servers(runner, tls_server, pki, tmp_path,
                                                                       bad_input_table):
    """The system's trust store (SSL_CERT_FILE here) holds the CA that signed the server's certificate: without
    tls_ca_cert the runner trusts it (the control), but with tls_ca_cert naming another CA it must not
    (issue 18, item 7: kazoo loads the system's store besides tls_ca_cert)."""
    client = {}
    if tls_server.client_auth == "need":
        client.update(tls_client_cert=pki / "client.crt", tls_client_key=pki / "client.key")
    env = {"SSL_CERT_FILE": str(pki / "ca.pem"), "SSL_CERT_DIR": str(tmp_path)}
    for keys, code in (({}, 0), ({"tls_ca_cert": pki / "stranger.pem"}, 69)):
        marker = runner.path("ran")
        config = _config(tmp_path, tls_server.port, **dict(client, **keys))
        result = runner.raw(["run", "tls-job", "--root", "/tls", "--config", config, "--connect-timeout", "2",
                             "--", "touch", marker], env=env)
        assert result.returncode == code, (keys, result)
        assert os.path.exists(marker) == (code == 0), (keys, result)
        if code:
            assert "TLS is on" in result.stderr and "tls_ca_cert signed" in result.stderr
            if tls_server.client_auth == "need":
                bad_input_table.add(
                    "runner", "tls_ca_cert naming a CA that did not sign the server's certificate, while the "
                    "system's trust store (SSL_CERT_FILE) holds the CA that did", "exit %d" % code,
                    result.stderr.replace("zoo-locked: ", "", 1).replace(str(tls_server.port), "PORT"),
                    "COMMAND not run")
