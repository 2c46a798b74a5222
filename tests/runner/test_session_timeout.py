"""The session timeout the runner counts with is the one the server granted, not the one asked for."""

import time

from zkharness import records, wait_for


def test_granted_session_timeout_is_used(runner, zk_factory, tmp_path):
    # This server grants at most 3 s, whatever the client asks for.
    server = zk_factory(max_session_timeout=3000)
    root = "/granted"
    result = runner.run("granted", ["true"], "--session-timeout", "30", hosts=server.hosts, root=root)
    assert result.returncode == 0, result.stderr
    (acquired,) = result.log_lines("acquired")
    assert acquired[1]["session_timeout"] == "3.000s", acquired


def test_command_stopped_within_the_granted_timeout(runner, zk_factory, proxy_factory):
    """Asked for 30 s, granted 3 s: when cut off, COMMAND must be stopped within 3 s, not 30."""
    server = zk_factory(max_session_timeout=3000)
    proxy = proxy_factory(server.port)
    record = runner.path("runs")
    bg = runner.start("granted-cut", runner.worker(record=record, sleep=60), "--session-timeout", "30",
                      hosts=proxy.hosts, root="/granted")
    wait_for(lambda: records(record, "start"), 15, message="COMMAND to start")
    proxy.freeze()
    frozen_at = time.time()
    result = bg.wait(30)
    assert result.returncode == 70, result.stderr
    ended = [r for r in records(record) if r["event"] in ("signal", "end")]
    assert ended and ended[0]["t"] - frozen_at < 3.0, ended
