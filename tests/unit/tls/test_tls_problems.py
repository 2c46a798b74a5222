"""_tls.tls_problems, the one check of TLS files (modules and roles), with real keys and certificates made by
openssl: a good pair, a pair that does not match, an encrypted key with and without its password, a CA that
is not PEM, each given as a file path and as PEM text. No message may show a key, its text or a password."""

import importlib
import os
import re
import subprocess
import sys
import tempfile

import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
PASSWORD = "Tls-Unit-Secret-4c9"
NAMES = {"ca_cert": "runner_tls_ca_cert", "cert": "runner_tls_client_cert", "key": "runner_tls_client_key",
         "key_password": "runner_tls_client_key_password"}


@pytest.fixture(scope="module")
def tls():
    sys.path.insert(0, os.path.join(ROOT, ".venv", "lib", "zoo-locked"))
    return importlib.import_module("zoo_locked._tls")


def openssl(*args):
    subprocess.run(("openssl",) + args, check=True, capture_output=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """A CA, two certificates it signed (cert1, cert2) with their plain keys, and key1 encrypted two ways."""
    d = tmp_path_factory.mktemp("pki")

    def p(name):
        return str(d / name)

    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", p("ca.key"), "-out", p("ca.pem"), "-subj", "/CN=zl-test-ca", "-days", "1")
    for n in ("1", "2"):
        openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                "-keyout", p("key%s.pem" % n), "-out", p("req%s.csr" % n), "-subj", "/CN=node%s" % n)
        openssl("x509", "-req", "-in", p("req%s.csr" % n), "-CA", p("ca.pem"), "-CAkey", p("ca.key"),
                "-CAcreateserial", "-out", p("cert%s.pem" % n), "-days", "1")
    openssl("pkey", "-in", p("key1.pem"), "-aes256", "-passout", "pass:" + PASSWORD, "-out", p("enc1.pem"))
    openssl("ec", "-in", p("key1.pem"), "-aes256", "-passout", "pass:" + PASSWORD, "-out", p("legacy1.pem"))
    (d / "not-pem.txt").write_text("this is not a certificate\n")
    with open(p("combined1.pem"), "w") as handle:
        handle.write((d / "key1.pem").read_text() + (d / "cert1.pem").read_text())
    return d


def given(pki, form, **files):
    """Each file by name in the pki directory, as its path or as its text."""
    out = {}
    for field, value in files.items():
        if field == "key_password" or not value:
            out[field] = value
        else:
            out[field] = str(pki / value) if form == "path" else (pki / value).read_text()
    return out


def check(tls, pki, problems):
    """No message shows a key's text, the password or any PEM text."""
    for problem in problems:
        assert PASSWORD not in problem and "-----" not in problem, problem
        for name in ("key1.pem", "key2.pem", "enc1.pem", "legacy1.pem"):
            body = (pki / name).read_text().splitlines()[2]
            assert body not in problem, problem
    return problems


@pytest.fixture(autouse=True)
def no_temporary_files_left(tmp_path, monkeypatch):
    """Text is written to private temporary files for ssl; each must be removed, whatever the outcome."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    yield
    assert os.listdir(str(tmp_path)) == []


@pytest.mark.parametrize("form", ["path", "text"])
def test_good_files_have_no_problems(tls, pki, form):
    assert tls.tls_problems(given(pki, form, ca_cert="ca.pem", cert="cert1.pem", key="key1.pem"), NAMES) == []
    assert tls.tls_problems(given(pki, form, ca_cert="ca.pem", cert="cert2.pem", key="key2.pem",
                                  key_password=""), NAMES) == []
    # A certificate file that holds its key too (the modules allow tls_client_cert alone).
    assert tls.tls_problems(given(pki, form, cert="combined1.pem"), NAMES) == []
    assert tls.tls_problems({}, NAMES) == []
    assert tls.tls_problems({"ca_cert": None, "cert": "", "key": None, "key_password": None}) == []


@pytest.mark.parametrize("form", ["path", "text"])
@pytest.mark.parametrize("key", ["enc1.pem", "legacy1.pem"])
def test_encrypted_key_opens_with_its_password_only(tls, pki, form, key):
    good = given(pki, form, ca_cert="ca.pem", cert="cert1.pem", key=key, key_password=PASSWORD)
    assert tls.tls_problems(good, NAMES) == []
    missing = check(tls, pki, tls.tls_problems(dict(good, key_password=""), NAMES))
    assert len(missing) == 1 and missing[0].startswith("runner_tls_client_key"), missing
    assert "is encrypted: set runner_tls_client_key_password to its password." in missing[0]
    wrong = check(tls, pki, tls.tls_problems(dict(good, key_password="Not-" + PASSWORD), NAMES))
    assert len(wrong) == 1 and wrong[0].startswith("runner_tls_client_key_password does not open "
                                                   "runner_tls_client_key"), wrong
    assert "set the key's password (the value is not shown)" in wrong[0] and "Not-" not in wrong[0]
    # A ZooKeeper server's key must be plain, password or not.
    server = check(tls, pki, tls.tls_problems(good, {"key": "zookeeper_tls_key"}, encrypted_key_ok=False))
    assert len(server) == 1 and "zookeeper_tls_key" in server[0], server
    assert "is encrypted, and ZooKeeper reads only unencrypted keys" in server[0]
    assert "openssl pkey -in KEY -out PLAIN" in server[0]


@pytest.mark.parametrize("form", ["path", "text"])
def test_key_of_another_certificate(tls, pki, form):
    problems = check(tls, pki, tls.tls_problems(given(pki, form, cert="cert1.pem", key="key2.pem"), NAMES))
    assert len(problems) == 1, problems
    assert "runner_tls_client_cert" in problems[0] and "runner_tls_client_key" in problems[0]
    assert "do not match: the key must belong to the certificate" in problems[0]
    # A path is shown, to say which file; text never is.
    assert (str(pki / "cert1.pem") in problems[0]) == (form == "path")
    assert (str(pki / "key2.pem") in problems[0]) == (form == "path")


@pytest.mark.parametrize("form", ["path", "text"])
def test_ca_that_is_not_a_certificate(tls, pki, form):
    # (Text without "-----BEGIN" is taken for a path: test_neither_text_nor_file.)
    for ca in ("not-pem.txt", "key1.pem") if form == "path" else ("key1.pem",):
        problems = check(tls, pki, tls.tls_problems(given(pki, form, ca_cert=ca), NAMES))
        assert len(problems) == 1, problems
        assert problems[0].startswith("runner_tls_ca_cert") and "not a PEM CA certificate" in problems[0]
        assert "set it to the certificate of the CA, in PEM form" in problems[0]
    # The modules' names: the CA's problem and the pair's, both at once.
    problems = tls.tls_problems(given(pki, form, ca_cert="key1.pem", cert="cert1.pem", key="key2.pem"),
                                {"ca_cert": "tls_ca_cert", "cert": "tls_client_cert", "key": "tls_client_key"})
    assert [re.match("[a-z_]+", p).group() for p in problems] == ["tls_ca_cert", "tls_client_cert"], problems


def test_certificate_and_key_that_are_not_pem(tls, pki):
    problems = tls.tls_problems(given(pki, "path", cert="not-pem.txt", key="key1.pem"), NAMES)
    assert len(problems) == 1 and "runner_tls_client_cert" in problems[0], problems
    assert "not a PEM certificate that can be loaded" in problems[0]
    problems = check(tls, pki, tls.tls_problems(given(pki, "path", cert="cert1.pem", key="not-pem.txt"), NAMES))
    assert len(problems) == 1 and problems[0].startswith("runner_tls_client_key"), problems
    assert "not a PEM private key that can be loaded" in problems[0]
    problems = tls.tls_problems(given(pki, "path", cert="cert1.pem"), NAMES)
    assert len(problems) == 1 and "holds no private key" in problems[0], problems
    assert "set runner_tls_client_key to its key" in problems[0]


def test_key_without_its_certificate(tls, pki):
    problems = tls.tls_problems(given(pki, "path", key="key1.pem"), NAMES)
    assert problems == ["runner_tls_client_key %s: set runner_tls_client_cert too (the certificate this key "
                        "belongs to)." % (pki / "key1.pem")]


def test_neither_text_nor_file(tls, pki):
    secret_looking = "MHcCAQEEI" + PASSWORD
    problems = check(tls, pki, tls.tls_problems(
        {"ca_cert": "relative/ca.pem", "cert": str(pki / "missing.pem"), "key": secret_looking}, NAMES))
    assert len(problems) == 3, problems
    assert problems[0].startswith("runner_tls_ca_cert relative/ca.pem is neither PEM text nor a readable PEM "
                                  "file (not an absolute path)")
    assert problems[1].startswith("runner_tls_client_cert %s is neither" % (pki / "missing.pem"))
    assert "No such file or directory" in problems[1]
    # A key's value is shown only when it is a file: anything else might be the key itself.
    assert problems[2].startswith("runner_tls_client_key is neither PEM text nor a readable PEM file")
    assert secret_looking not in " ".join(problems)
    problems = tls.tls_problems({"ca_cert": str(pki)}, NAMES)
    assert len(problems) == 1 and "Is a directory" in problems[0], problems
