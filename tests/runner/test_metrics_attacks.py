"""A job user attacks the metrics directory, where runners of other users (root) write after their job
(issue 18, item 5). Real files, a real FIFO and symlinks made by a real other user (nobody, through setpriv),
and the real runner as root or as that user. Nothing a job user puts in the directory may make a root runner
hang, read without limit, follow a link or write outside the directory; each refusal is logged naming the file.
"""

import importlib
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile

import pytest

from zkharness import REPO_ROOT, ZOO_LOCKED, runner_env, wait_for

NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
PROMPT = 10.0  # seconds: a runner that waited on a FIFO never returned (612 s until killed in the issue)


@pytest.fixture
def metrics_dir():
    """DIR/metrics as the crontab role makes it (root:nogroup 1775, nogroup standing for the runner group), in a
    base directory that nobody can reach (pytest's tmp_path is private to root)."""
    base = tempfile.mkdtemp(prefix="zl-metrics-", dir="/tmp")
    os.chmod(base, 0o755)
    path = os.path.join(base, "metrics")
    os.mkdir(path)
    os.chown(path, 0, 65534)
    os.chmod(path, 0o1775)
    yield path
    shutil.rmtree(base)


@pytest.fixture(scope="module")
def metrics_module():
    sys.path.insert(0, os.path.join(REPO_ROOT, ".venv", "lib", "zoo-locked"))
    return importlib.import_module("zoo_locked._metrics")


def as_nobody(*argv):
    return subprocess.run(NOBODY + list(argv), capture_output=True, text=True, timeout=30, check=False)


def run_as_nobody(runner, name, metrics_dir):
    args = runner.run_args(name, ["true"], ["--slot", "s1", "--metrics-dir", metrics_dir])
    return subprocess.run(NOBODY + [ZOO_LOCKED] + args, capture_output=True, text=True, timeout=60,
                          env=runner_env(None, runner.mark), start_new_session=True, check=False)


def prom(metrics_dir, name):
    return os.path.join(metrics_dir, "zoo_locked_%s.prom" % name)


def leftovers(metrics_dir):
    return sorted(n for n in os.listdir(metrics_dir) if ".prom." in n)


def run_as_root(runner, name, metrics_dir):
    result = runner.run(name, ["true"], "--slot", "s1", "--metrics-dir", metrics_dir, timeout=60)
    assert result.returncode == 0, result.stderr  # metrics never change the job's outcome
    assert result.elapsed < PROMPT, "the runner took %.1f s" % result.elapsed
    return result


def shown(line, metrics_dir):
    """The log line as the bad-input table shows it, with the test's directory as DIR."""
    return line.replace("zoo-locked: ", "", 1).replace(metrics_dir, "DIR")


def refused_line(stderr, path):
    lines = [line for line in stderr.splitlines() if "could not write metrics" in line and path in line]
    assert lines, "no error naming %s:\n%s" % (path, stderr)
    return lines[0]


def test_fifo_in_place_of_the_metrics_file_is_refused_at_once(runner, metrics_dir, bad_input_table):
    path = prom(metrics_dir, "fifo")
    assert as_nobody("mkfifo", path).returncode == 0
    result = run_as_root(runner, "fifo", metrics_dir)
    line = refused_line(result.stderr, path)
    assert "is a FIFO, not a regular file" in line and "remove it" in line
    info = os.lstat(path)
    assert stat.S_ISFIFO(info.st_mode) and info.st_uid == 65534
    assert leftovers(metrics_dir) == []
    bad_input_table.add("runner", "a job user's FIFO in place of the metrics file (`mkfifo DIR/zoo_locked_NAME.prom`)",
                        "exit of COMMAND (0), at once", shown(line, metrics_dir),
                        "FIFO left as it was, not opened for blocking; no file written")


@pytest.mark.parametrize("target", ["/dev/zero", "secret"])
def test_symlink_in_place_of_the_metrics_file_is_not_followed(runner, metrics_dir, target, bad_input_table):
    if target == "secret":  # a root-only file outside the directory
        target = os.path.join(os.path.dirname(metrics_dir), "secret")
        with open(target, "w") as f:
            f.write("precious\n")
        os.chmod(target, 0o600)
    before = os.stat(target)
    path = prom(metrics_dir, "link")
    assert as_nobody("ln", "-s", target, path).returncode == 0
    result = run_as_root(runner, "link", metrics_dir)
    line = refused_line(result.stderr, path)
    assert "is a symbolic link, not a regular file" in line
    assert os.readlink(path) == target
    after = os.stat(target)
    assert (after.st_mode, after.st_uid, after.st_size, after.st_mtime_ns) == (
        before.st_mode, before.st_uid, before.st_size, before.st_mtime_ns)
    if not target.startswith("/dev/"):
        with open(target) as f:
            assert f.read() == "precious\n"
    assert leftovers(metrics_dir) == []
    bad_input_table.add("runner", "a job user's symlink to %s in place of the metrics file"
                        % ("/dev/zero" if target == "/dev/zero" else "a root-only file"),
                        "exit of COMMAND (0)", shown(line, metrics_dir),
                        "link not followed: its target unchanged (mode, owner, size, mtime); no file written")


def test_existing_temporary_name_is_never_opened(metrics_dir, metrics_module):
    """The temporary file is created with O_CREAT|O_EXCL|O_NOFOLLOW: whatever already has its name (a symlink to
    a root-only file, a FIFO, another user's file) makes the creation fail and is left as it was."""
    base = os.path.dirname(metrics_dir)
    secret = os.path.join(base, "secret")
    with open(secret, "w") as f:
        f.write("precious\n")
    os.chmod(secret, 0o600)
    planted = {"link": ["ln", "-s", secret], "fifo": ["mkfifo"], "file": ["touch"]}
    dir_fd = os.open(metrics_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for kind, argv in planted.items():
            name = "zoo_locked_x.prom.%s" % kind
            assert as_nobody(*(argv + [os.path.join(metrics_dir, name)])).returncode == 0
            with pytest.raises(FileExistsError):
                metrics_module.create_new(dir_fd, name)
        fd = metrics_module.create_new(dir_fd, "zoo_locked_x.prom.fresh")  # a free name works
        os.close(fd)
    finally:
        os.close(dir_fd)
    with open(secret) as f:
        assert f.read() == "precious\n"
    assert os.readlink(os.path.join(metrics_dir, "zoo_locked_x.prom.link")) == secret
    assert stat.S_ISFIFO(os.lstat(os.path.join(metrics_dir, "zoo_locked_x.prom.fifo")).st_mode)
    assert os.path.getsize(os.path.join(metrics_dir, "zoo_locked_x.prom.file")) == 0


def test_sticky_directory_keeps_each_users_metrics_their_own(runner, metrics_dir, bad_input_table):
    # A normal write as root, and one as the job user, both still work.
    run_as_root(runner, "rootjob", metrics_dir)
    mine = run_as_nobody(runner, "userjob", metrics_dir)
    assert mine.returncode == 0, mine.stderr
    assert "metrics" not in mine.stderr, mine.stderr
    assert os.stat(prom(metrics_dir, "userjob")).st_uid == 65534
    root_path = prom(metrics_dir, "rootjob")
    info = os.stat(root_path)
    assert (info.st_uid, stat.S_IMODE(info.st_mode)) == (0, 0o644)
    with open(root_path) as f:
        original = f.read()
    assert 'zoo_locked_last_exit_code{job="rootjob"} 0.0' in original
    # The job user can neither delete, replace nor write root's file...
    assert as_nobody("rm", "-f", root_path).returncode != 0
    assert as_nobody("mv", "-f", prom(metrics_dir, "userjob"), root_path).returncode != 0
    assert as_nobody("sh", "-c", "echo forged > %s" % root_path).returncode != 0
    # ...nor through its own runner, which is told why.
    as_nobody_run = run_as_nobody(runner, "rootjob", metrics_dir)
    assert as_nobody_run.returncode == 0, as_nobody_run.stderr
    line = refused_line(as_nobody_run.stderr, root_path)
    assert "cannot replace metrics file" in line and "sticky" in line
    with open(root_path) as f:
        assert f.read() == original
    assert leftovers(metrics_dir) == []
    bad_input_table.add("runner", "a job user's runner writing metrics over a file of another user (root) in the "
                        "sticky metrics directory", "exit of COMMAND (0)", shown(line, metrics_dir),
                        "root's file unchanged (same text, owner root, mode 0644); no temporary file left")


def test_forged_metrics_of_a_job_not_yet_run_are_replaced_not_carried_over(runner, metrics_dir):
    path = prom(metrics_dir, "newjob")
    forged = ('zoo_locked_slot_done_skips_total{job="newjob"} 1000.0\n'
              'zoo_locked_last_success_timestamp_seconds{job="newjob"} 9999999999.0\n')
    assert as_nobody("sh", "-c", "printf '%%s' '%s' > %s" % (forged, path)).returncode == 0
    assert os.stat(path).st_uid == 65534
    result = run_as_root(runner, "newjob", metrics_dir)
    assert "metrics" not in result.stderr, result.stderr
    info = os.stat(path)
    assert (info.st_uid, stat.S_IMODE(info.st_mode)) == (0, 0o644)
    with open(path) as f:
        text = f.read()
    assert "1000" not in text and "9999999999" not in text, text
    assert 'zoo_locked_slot_done_skips_total{job="newjob"} 0.0' in text


def test_oversized_previous_file_is_read_only_up_to_the_limit(runner, metrics_dir, metrics_module):
    path = prom(metrics_dir, "big")
    with open(path, "w") as f:  # root's own file, but not one the runner wrote: only a bounded part is read
        f.write('zoo_locked_slot_done_skips_total{job="big"} 7.0\n' + "#" * (metrics_module.MAX_PREVIOUS * 64))
    result = run_as_root(runner, "big", metrics_dir)
    assert "metrics" not in result.stderr, result.stderr
    with open(path) as f:
        text = f.read()
    assert len(text) < 2048 and 'zoo_locked_slot_done_skips_total{job="big"} 0.0' in text, text[:300]


def test_group_writable_directory_without_sticky_bit_is_refused(runner, metrics_dir, bad_input_table):
    os.chmod(metrics_dir, 0o775)
    result = run_as_root(runner, "loose", metrics_dir)
    line = refused_line(result.stderr, metrics_dir)
    assert "is not sticky" in line and "chmod +t %s" % metrics_dir in line
    assert os.listdir(metrics_dir) == []
    bad_input_table.add("runner", "metrics directory writable by the group, not sticky (mode 0775, as the crontab "
                        "role made it before)", "exit of COMMAND (0)", shown(line, metrics_dir),
                        "nothing written in the directory")


def test_runner_stays_killable_while_it_writes_metrics(runner, kazoo, metrics_dir, tmp_path):
    """The metrics are written last, after the lock is withdrawn, and no signal is ignored then: a write that
    hangs (here prometheus-client stands in for a hung disk: it never returns) ends at the first SIGTERM, as a
    `timeout` wrapper sends it. The runner used to ignore it (612 s in the issue)."""
    fake = tmp_path / "hang" / "prometheus_client"
    fake.mkdir(parents=True)
    hanging = tmp_path / "hanging"
    fake.joinpath("__init__.py").write_text("import time\nopen(%r, 'w').close()\ntime.sleep(120)\n" % str(hanging))
    proc = runner.start("killable", ["true"], "--slot", "s1", "--metrics-dir", metrics_dir,
                        env={"PYTHONPATH": str(tmp_path / "hang")})
    wait_for(hanging.exists, 30, message="the runner to start writing its metrics")
    assert "released" in proc.stderr, proc.stderr  # the lock is already withdrawn
    proc.signal(signal.SIGTERM)
    result = proc.wait(PROMPT)
    assert result.returncode == -signal.SIGTERM, result
    assert runner.lock_nodes(kazoo) == []
