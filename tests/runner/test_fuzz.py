"""Fuzzing the runner's argument, environment and config parsing with hypothesis: every failure is a clean
message with a documented exit code, never a traceback."""

import contextlib
import io
import os
import subprocess
import sys
import tempfile

from hypothesis import HealthCheck, given, settings, strategies as st

from zkharness import REPO_ROOT, ZOO_LOCKED

sys.path.insert(0, os.path.join(REPO_ROOT, ".venv", "lib", "zoo-locked"))

from zoo_locked import _config, _runner  # noqa: E402

OPTIONS = ["--wait", "--timeout", "--kill-after", "--owner", "--purpose", "--syslog", "--schedule", "--slot",
           "--retry-failed", "--max-delay", "--keep", "--metrics-dir", "--hosts", "--root", "--session-timeout",
           "--connect-timeout", "--config", "--verbose", "--json", "--limit", "--fix", "--help", "-h", "--version",
           "--", "-", "---", "--=", "--wait=", "--hosts=a:1"]
WORDS = st.one_of(
    st.sampled_from(OPTIONS + ["run", "status", "history", "acl", "invoices", "a/b", "..", ".x", "1e309", "nan",
                               "-1", "0", "inf", "@hourly", "* * * * *", "", "\u20ac", "x" * 200]),
    st.text(max_size=30),
    st.from_regex(r"-?[0-9]{0,6}(\.[0-9]{0,3})?(e[0-9]{1,3})?", fullmatch=True),
)
ARGV = st.lists(WORDS, max_size=12)
DOCUMENTED = {0, 64, 69, 70, 75, 78, 124, 126, 127}


@settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ARGV)
def test_parse_never_fails_uncleanly(argv):
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            options, command = _runner.parse(argv)
        except (_runner.UsageError, _runner.HelpShown) as exc:
            assert isinstance(exc, _runner.HelpShown) or str(exc).strip(), "a usage error must say something"
            return
    assert options.subcommand in ("run", "status", "history", "acl")
    if options.subcommand == "run":
        assert command and _config.check_lock_name(options.name) is None
        assert 0 <= options.wait <= _runner.MAX_SECONDS


INI_LINE = st.one_of(
    st.sampled_from(["[zoo-locked]", "[other]", "hosts = zk1:2181", "root = /zl", "session_timeout = 5",
                     "connect_timeout = x", "auth = digest:a:b", "tls = yes", "tls = maybe", "metrics_dir = rel",
                     "tls_ca_cert = /nonexistent", "unknown = 1", "hosts", "= value", "[", "%(x)s", "root = /a/../b"]),
    st.text(max_size=40),
)


@settings(max_examples=1000, deadline=None)
@given(st.lists(INI_LINE, max_size=8), st.sampled_from([0o600, 0o644]))
def test_config_file_parsing_never_fails_uncleanly(lines, mode):
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "zl.conf")
        with open(path, "w", encoding="utf-8", errors="surrogatepass") as handle:
            handle.write("\n".join(lines))
        os.chmod(path, mode)
        try:
            settings_ = _config.read_config_file(path, required=True)
        except _config.ConfigError as exc:
            assert path in str(exc)
            return
        except UnicodeError:
            raise AssertionError("undecodable text must be a ConfigError")
    assert set(settings_) <= set(_config.FILE_KEYS)


@settings(max_examples=1000, deadline=None)
@given(st.dictionaries(st.sampled_from(sorted(_config.ENVIRONMENT)), st.text(max_size=40), max_size=4))
def test_environment_parsing_never_fails_uncleanly(environ):
    environ = dict(environ, ZOO_LOCKED_CONFIG="/nonexistent-zl-fuzz.conf")
    try:
        _config.resolve({}, environ)
    except _config.ConfigError as exc:
        assert str(exc)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ARGV)
def test_the_command_line_tool_exits_with_a_documented_code(argv):
    # Nothing listens on port 1: a run that gets that far ends with 69 within the connect timeout.
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZOO_LOCKED_")}
    env.update(ZOO_LOCKED_HOSTS="127.0.0.1:1", ZOO_LOCKED_CONNECT_TIMEOUT="0.5",
               ZOO_LOCKED_CONFIG="/nonexistent-zl-fuzz.conf")
    argv = [a.replace("\x00", "") for a in argv]
    result = subprocess.run([ZOO_LOCKED] + argv, capture_output=True, text=True, errors="replace", env=env,
                            timeout=30, stdin=subprocess.DEVNULL, check=False)
    assert result.returncode in DOCUMENTED, (argv, result.returncode, result.stderr)
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr, (argv, result.stderr)
