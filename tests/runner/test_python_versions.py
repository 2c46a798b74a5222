"""Nodes may run any Python from 3.9: the runner's code compiles on each, and runs on the oldest."""

import glob
import os
import shutil
import subprocess

import pytest

from zkharness import REPO_ROOT

MODULE_UTILS = os.path.join(REPO_ROOT, "plugins", "module_utils")
VERSIONS = ["3.9", "3.10", "3.11", "3.12", "3.13"]


def _python(version):
    """One of pyenv's interpreters (this machine image has 3.9 to 3.13), else one on PATH (not a pyenv shim,
    which fails for versions that are not selected)."""
    candidates = sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/%s.*/bin/python%s" % (version, version))))
    if candidates:
        return candidates[-1]
    found = shutil.which("python" + version)
    if found and "/shims/" not in found:
        return found
    raise AssertionError("no Python %s on this machine: install it (the runner supports 3.9+)" % version)


@pytest.mark.parametrize("version", VERSIONS)
def test_module_utils_compile(version, tmp_path):
    python = _python(version)
    files = sorted(glob.glob(os.path.join(MODULE_UTILS, "*.py")))
    assert files
    code = "import py_compile, sys\nfor f in sys.argv[1:]:\n    py_compile.compile(f, cfile=%r, doraise=True)\n" % (
        str(tmp_path / "x.pyc"))
    result = subprocess.run([python, "-c", code] + files, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr


def test_runner_runs_on_python_39(zk, tmp_path):
    """A virtualenv of Python 3.9 with requirements/runner.txt, laid out as the runner role lays it out."""
    python = _python("3.9")
    venv = os.path.join(REPO_ROOT, ".cache", "py39-runner")
    pins = os.path.join(REPO_ROOT, "requirements", "runner.txt")
    stamp = os.path.join(venv, "requirements.txt")
    with open(pins) as handle:
        wanted = handle.read()
    if not os.path.exists(stamp) or open(stamp).read() != wanted:
        shutil.rmtree(venv, ignore_errors=True)
        subprocess.run([python, "-m", "venv", venv], check=True)
        subprocess.run([os.path.join(venv, "bin", "pip"), "install", "-q", "--disable-pip-version-check", "-r", pins],
                       check=True, timeout=300)
        with open(stamp, "w") as handle:
            handle.write(wanted)
    lib = tmp_path / "lib" / "zoo-locked"
    lib.mkdir(parents=True)
    os.symlink(MODULE_UTILS, str(lib / "zoo_locked"))
    (tmp_path / "bin").mkdir()
    launcher = tmp_path / "bin" / "zoo-locked"
    with open(os.path.join(REPO_ROOT, "roles", "runner", "files", "zoo-locked.py")) as handle:
        launcher.write_text("#!%s/bin/python\n" % venv + handle.read())
    launcher.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZOO_LOCKED_")}
    env["PYTHONDONTWRITEBYTECODE"] = "1"  # leave no 3.9 byte code in the checkout
    common = ["--hosts", zk.hosts, "--root", zk.root]
    for args in (["run", "py39"] + common + ["--", "sh", "-c", "echo token=$ZOO_LOCKED_TOKEN"],
                 ["run", "py39-slot"] + common + ["--schedule", "*/5 * * * *", "--", "true"],
                 ["status", "--json"] + common):
        result = subprocess.run([str(launcher)] + args, capture_output=True, text=True, env=env, timeout=60,
                                check=False)
        assert result.returncode == 0, (args, result.stderr)
        assert "Traceback" not in result.stderr
    version = subprocess.run([os.path.join(venv, "bin", "python"), "--version"], capture_output=True, text=True,
                             check=True).stdout
    assert version.startswith("Python 3.9"), version
