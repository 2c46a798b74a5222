"""What cron finally runs is exactly the job's command: rendered lines go through a model of cron's own
processing (Debian's and cronie's) and a real /bin/sh, and must behave like the command run directly."""

import json
import os
import subprocess
import sys

import pytest

TRICKY_COMMANDS = [
    "echo plain",
    "printf '%s\\n' \"100%\"",
    "date +%Y-%m-%d >/dev/null; echo %%%",
    "echo 'it'\"'\"'s' \"it's\" it\\'s",
    "printf '[%s]\\n' 'a\\b' 'a\\\\b' \"a\\\\\\\\b\" a\\\\b 'x\\%y' \"\\%\" '\\\\%' \\%",
    "echo \"$HOME\" '$HOME' \\$HOME \"$(echo sub%)\" `echo tick%`",
    "printf '%s|' 'tab\there' ; echo",
    "echo héllo 100% ünïcode",
    "echo a\\\\",
    "echo 'x' # a comment with % and '",
    "echo '\\''%'\"\\\\%\"",
    "test 1 = 1 && echo yes || echo no",
]

FAKE_RUNNER = """#!{python}
import json, os, sys
argv = sys.argv[1:]
with open(os.environ["ARGV_LOG"], "a") as log:
    log.write(json.dumps(argv) + "\\n")
os.execvp(argv[argv.index("--") + 1], argv[argv.index("--") + 1:])
"""


def _cron_model(command, escapable):
    """What a cron hands to the shell: a backslash before one of `escapable` is dropped, and the command is cut
    at the first bare %."""
    out, escaped = [], False
    for ch in command:
        if escaped:
            escaped = False
            if ch in escapable:
                out[-1] = ch
                continue
            out.append(ch)
            continue
        if ch == "%":
            break
        escaped = ch == "\\"
        out.append(ch)
    return "".join(out)


def debian_cron(command):
    """What Debian's cron hands to the shell: \\% -> %, \\\\ -> \\, cut at the first bare % (observed)."""
    return _cron_model(command, "%\\")


def cronie(command):
    """What cronie hands to the shell: only \\% -> %, cut at the first bare %."""
    return _cron_model(command, "%")


def job_lines(text):
    """(schedule, user, command) of each job line of a rendered file."""
    result = []
    for line in text.splitlines():
        if not line or line.startswith("#") or "=" in line.split(" ", 1)[0]:
            continue
        fields = line.split(" ", 2 if line.startswith("@") else 6)
        if line.startswith("@"):
            result.append((fields[0], fields[1], fields[2]))
        else:
            result.append((" ".join(fields[:5]), fields[5], fields[6]))
    return result


def sh(command, env=None):
    run_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": "/home/test"}
    run_env.update(env or {})
    return subprocess.run(["/bin/sh", "-c", command], capture_output=True, env=run_env, timeout=10, check=False)


@pytest.fixture
def fake_runner(tmp_path):
    path = tmp_path / "zoo-locked"
    path.write_text(FAKE_RUNNER.format(python=sys.executable))
    path.chmod(0o755)
    return str(path), str(tmp_path / "argv.log")


@pytest.mark.parametrize("cron", [debian_cron, cronie], ids=["debian", "cronie"])
@pytest.mark.parametrize("lock", ["exclusive", "none"])
@pytest.mark.parametrize("command", TRICKY_COMMANDS)
def test_cron_runs_exactly_the_command(crontab, fake_runner, cron, lock, command):
    runner, argv_log = fake_runner
    jobs = [{"name": "job", "schedule": "* * * * *", "command": command, "lock": lock}]
    (schedule, user, line), = job_lines(crontab.render(jobs, runner=runner))
    assert (schedule, user) == ("* * * * *", "root")
    through_cron = sh(cron(line), {"ARGV_LOG": argv_log})
    direct = sh(command)
    assert through_cron.returncode == direct.returncode
    assert through_cron.stdout == direct.stdout
    assert through_cron.stderr == direct.stderr
    if lock == "exclusive":
        with open(argv_log) as log:
            argv = json.loads(log.readline())
        # The schedule reaches the runner as one word, its stars not expanded by either shell.
        assert argv == ["run", "job", "--schedule", "* * * * *", "--", "/bin/sh", "-c", command]
    else:
        assert not os.path.exists(argv_log)


@pytest.mark.parametrize("cron", [debian_cron, cronie], ids=["debian", "cronie"])
def test_job_environment_reaches_the_command_unchanged(crontab, fake_runner, cron):
    runner, argv_log = fake_runner
    environment = {"PLAIN": "x", "PCT": "100% \\% %%", "QUOTES": "it's \"q\"", "DOLLAR": "$HOME `x` $(y)",
                   "BACK": "a\\b\\\\c\\", "EMPTY": "", "SPACES": "  two  "}
    command = "".join("printf '%%s=[%%s]\\n' %s \"$%s\";" % (k, k) for k in sorted(environment))
    for lock in ("exclusive", "none"):
        jobs = [{"name": "env", "schedule": "@hourly", "command": command, "lock": lock, "environment": environment}]
        line = job_lines(crontab.render(jobs, runner=runner))[0][2]
        result = sh(cron(line), {"ARGV_LOG": argv_log})
        expected = "".join("%s=[%s]\n" % (k, environment[k]) for k in sorted(environment))
        assert result.stdout.decode() == expected, lock


def test_options_and_defaults_are_rendered(crontab):
    jobs = [
        {"name": "a", "schedule": "0 3 * * *", "command": "x", "wait": 30, "timeout": "600", "kill_after": 2.5},
        {"name": "b", "schedule": "0 3 * * *", "command": "y", "user": "app"},
        {"name": "c", "schedule": "0 3 * * *", "command": "z", "lock": "none"},
        {"name": "d", "schedule": "@hourly", "command": "w", "slots": False},
        {"name": "e", "schedule": "@hourly", "command": "v", "max_delay": 600, "retry_failed": True},
    ]
    text = crontab.render(jobs, runner="/usr/local/bin/zoo-locked",
                          defaults={"user": "nobody", "wait": 0, "timeout": 60}, metrics_dir="/var/lib/metrics")
    lines = [fields[2] for fields in job_lines(text)]
    assert lines == [
        "/usr/local/bin/zoo-locked run a --schedule '0 3 * * *' --wait 30 --timeout 600 --kill-after 2.5 "
        "--metrics-dir /var/lib/metrics -- /bin/sh -c 'x'",
        "/usr/local/bin/zoo-locked run b --schedule '0 3 * * *' --wait 0 --timeout 60 --metrics-dir /var/lib/metrics "
        "-- /bin/sh -c 'y'",
        "/bin/sh -c 'z'",
        "/usr/local/bin/zoo-locked run d --wait 0 --timeout 60 --metrics-dir /var/lib/metrics -- /bin/sh -c 'w'",
        "/usr/local/bin/zoo-locked run e --schedule @hourly --wait 0 --timeout 60 --max-delay 600 --retry-failed "
        "--metrics-dir /var/lib/metrics -- /bin/sh -c 'v'",
    ]
    assert [fields[1] for fields in job_lines(text)] == ["nobody", "app", "nobody", "nobody", "nobody"]


@pytest.mark.parametrize("job, wait", [
    # With slots: the shortest period of the schedule...
    ({"schedule": "*/5 * * * *"}, 300),
    ({"schedule": "0 9,17 * * *"}, 8 * 3600),
    ({"schedule": "@daily"}, 86400),
    ({"schedule": "0 0 31 * *"}, 31 * 86400),
    # ...or less when the job's timeout says it ends sooner: timeout + kill_after (runner default 10) + margin 60.
    ({"schedule": "@hourly", "timeout": 600}, 670),
    ({"schedule": "@hourly", "timeout": 600, "kill_after": 30}, 690),
    ({"schedule": "*/5 * * * *", "timeout": 600}, 300),
    ({"schedule": "@hourly", "max_delay": 120}, 120),
    # Without slots waiting would run the job again after the holder: 0.
    ({"schedule": "@hourly", "slots": False}, 0),
    ({"schedule": "@reboot"}, 0),
])
def test_automatic_wait_is_sized_to_the_job(crontab, job, wait):
    job = dict({"name": "j", "command": "x"}, **job)
    normalized, = crontab.normalize_jobs([job], {"wait": "auto"})
    assert normalized["wait"] == wait
    assert crontab.normalize_jobs([dict(job, wait="auto")])[0]["wait"] == wait


def test_automatic_wait_margin_comes_from_the_defaults(crontab):
    job = {"name": "j", "command": "x", "schedule": "@hourly", "timeout": 100}
    assert crontab.normalize_jobs([job], {"wait": "auto", "wait_margin": 5})[0]["wait"] == 115


def test_reboot_jobs_have_no_slot(crontab):
    text = crontab.render([{"name": "b", "schedule": "@reboot", "command": "x"}], defaults={"wait": "auto"})
    assert job_lines(text)[0][2] == "/usr/local/bin/zoo-locked run b --wait 0 -- /bin/sh -c 'x'"


def test_same_jobs_same_bytes(crontab):
    jobs_a = [{"name": "j", "schedule": "*/5  *  * * *", "command": "echo 1%",
               "environment": {"B": "2", "A": "1"}}]
    jobs_b = [{"environment": {"A": "1", "B": "2"}, "command": "echo 1%", "schedule": "*/5 * * * *", "name": "j"}]
    assert crontab.render(jobs_a, environment={"Y": "1", "X": "2"}) == \
        crontab.render(jobs_b, environment={"X": "2", "Y": "1"})


def test_absent_jobs_and_empty_list(crontab):
    text = crontab.render([{"name": "gone", "state": "absent"}])
    assert job_lines(text) == []
    assert "(no jobs)" in text
    assert text.endswith("\n")


def test_file_environment_lines(crontab):
    text = crontab.render([], environment={"MAILTO": "", "PATH": "/usr/bin:/bin", "Q": 'say "hi"', "S": "it's"})
    assert 'MAILTO=""\n' in text
    assert 'PATH="/usr/bin:/bin"\n' in text
    assert "Q='say \"hi\"'\n" in text
    assert 'S="it\'s"\n' in text


@pytest.mark.parametrize("value, message", [
    ("a'b\"c", "both"),
    ("trailing ", "trailing blanks"),
    ('"quoted"', "strips the quotes"),
    ("two\nlines", "newline"),
])
def test_file_environment_values_cron_would_alter_are_refused(crontab, value, message):
    with pytest.raises(crontab.CrontabError) as info:
        crontab.render([], environment={"V": value})
    assert message in str(info.value)
    assert "crontab_environment: V" in str(info.value)


def test_overlong_line_is_refused(crontab):
    with pytest.raises(crontab.CrontabError) as info:
        crontab.render([{"name": "long", "schedule": "@daily", "command": "echo " + "x" * 1000}])
    assert "job 'long': command:" in str(info.value)


def test_cron_escape_refuses_unquoted_backslashes(crontab):
    with pytest.raises(ValueError):
        crontab.cron_escape("echo a\\b")
