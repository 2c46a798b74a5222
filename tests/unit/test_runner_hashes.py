"""The runner role installs the pins of requirements/runner.txt, wheels only, each checked against a pinned sha256.

The hashes live in requirements/runner.lock (pip's format) and, since requirements/ is not shipped in the
collection, in the runner role's default runner_package_hashes: they must agree with each other and with the
pins of requirements/runner.txt. The wheel the role carries (pure-sasl: PyPI has only its source archive) must
have its pinned hash, and pip, run as the role runs it, installs that wheel and refuses a changed copy.
"""

import glob
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile

import yaml

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
WHEELS = os.path.join(ROOT, "roles", "runner", "files", "wheels")


def _lines(name):
    with open(os.path.join(ROOT, "requirements", name)) as handle:
        lines = [re.sub(r"\s+#.*$", "", line).strip() for line in handle]
    return [line for line in lines if line and not line.startswith("#")]


def _lock():
    """{pin: [sha256:HEX, ...]} from requirements/runner.lock, in its order."""
    pins = {}
    for line in _lines("runner.lock"):
        pin, rest = line.split(None, 1)
        pins[pin] = re.findall(r"--hash=(\S+)", rest)
    return pins


def _normalized(name):
    return re.sub(r"[-_.]+", "-", name).lower()


def _role_defaults_are(variable, wanted, source):
    """The runner role's default of ``variable``, in defaults/main.yml and in its argument spec, is ``wanted``."""
    with open(os.path.join(ROOT, "roles", "runner", "defaults", "main.yml")) as handle:
        defaults = yaml.safe_load(handle)
    assert defaults[variable] == wanted, (
        "roles/runner/defaults/main.yml %s differs from %s; copy it over (and the default in "
        "roles/runner/meta/argument_specs.yml)" % (variable, source))
    with open(os.path.join(ROOT, "roles", "runner", "meta", "argument_specs.yml")) as handle:
        spec = yaml.safe_load(handle)
    assert spec["argument_specs"]["main"]["options"][variable]["default"] == wanted


def test_runner_role_pins_match_requirements():
    _role_defaults_are("runner_packages", _lines("runner.txt"), "requirements/runner.txt")


def test_lock_pins_and_role_hashes_agree():
    lock = _lock()
    assert list(lock) == _lines("runner.txt"), "requirements/runner.lock must pin exactly requirements/runner.txt"
    for pin, digests in lock.items():
        assert digests and all(re.match(r"\Asha256:[0-9a-f]{64}\Z", d) for d in digests), (pin, digests)
    _role_defaults_are("runner_package_hashes", lock, "requirements/runner.lock")


def test_carried_wheels_have_their_pinned_hash():
    lock = dict((_normalized(pin.split("==")[0]) + "==" + pin.split("==")[1], d) for pin, d in _lock().items())
    wheels = sorted(glob.glob(os.path.join(WHEELS, "*.whl")))
    assert [os.path.basename(w) for w in wheels] == ["pure_sasl-0.6.2-py3-none-any.whl"]
    for wheel in wheels:
        name, version = os.path.basename(wheel).split("-")[:2]
        with open(wheel, "rb") as handle:
            digest = "sha256:" + hashlib.sha256(handle.read()).hexdigest()
        assert digest in lock[_normalized(name) + "==" + version], (wheel, digest)


def _pip_install(source, target, requirement):
    """pip as the runner role runs it on a node (hash-checking, wheels only, no index), into TARGET."""
    env = dict((k, v) for k, v in os.environ.items() if not k.startswith("PIP_"))
    env["PIP_CONFIG_FILE"] = os.devnull  # this machine's pip configuration (mirrors, constraints) stays out
    with open(os.path.join(source, "requirements.txt"), "w") as handle:
        handle.write(requirement + "\n")
    return subprocess.run(
        [sys.executable, "-m", "pip", "install", "--disable-pip-version-check", "--quiet", "--no-cache-dir",
         "--require-hashes", "--only-binary", ":all:", "--no-index", "--find-links", source,
         "--requirement", os.path.join(source, "requirements.txt"), "--target", target],
        capture_output=True, text=True, env=env, timeout=120, check=False)


def test_pip_installs_the_pinned_wheel_and_refuses_a_changed_one(tmp_path):
    pin = "pure-sasl==0.6.2"
    requirement = pin + "".join(" --hash=" + d for d in _lock()[pin])
    good, bad = tmp_path / "good", tmp_path / "bad"
    for folder in (good, bad):
        folder.mkdir()
        shutil.copy(os.path.join(WHEELS, "pure_sasl-0.6.2-py3-none-any.whl"), str(folder))
    with zipfile.ZipFile(str(bad / "pure_sasl-0.6.2-py3-none-any.whl"), "a") as wheel:
        wheel.writestr("puresasl/planted.py", "import os  # would run as root on every node\n")
    result = _pip_install(str(good), str(tmp_path / "installed"), requirement)
    assert result.returncode == 0, result.stderr
    assert os.path.isfile(str(tmp_path / "installed" / "puresasl" / "__init__.py"))
    result = _pip_install(str(bad), str(tmp_path / "refused"), requirement)
    assert result.returncode != 0 and "DO NOT MATCH THE HASHES" in result.stderr, result.stderr
    assert not os.path.exists(str(tmp_path / "refused" / "puresasl"))
    # A source archive is never built, even with the right hash: pip finds no wheel.
    archive = tmp_path / "sdist"
    archive.mkdir()
    (archive / "pure-sasl-0.6.2.tar.gz").write_bytes(b"not even an archive")
    result = _pip_install(str(archive), str(tmp_path / "built"), "pure-sasl==0.6.2 --hash=sha256:" + hashlib.sha256(
        b"not even an archive").hexdigest())
    assert result.returncode != 0 and "No matching distribution found for pure-sasl==0.6.2" in result.stderr, \
        result.stderr


def test_role_refuses_a_pin_without_a_valid_hash_before_any_change(tmp_path, collections_path, bad_input_table):
    """The runner role's own check, in a real ansible-playbook run against this machine (connection local)."""
    hashes = {"kazoo==2.11.0": ["md5:0123"], "six==1.17.0": "sha256:" + "0" * 64}
    hashes.update((pin, d) for pin, d in _lock().items()
                  if pin not in ("kazoo==2.11.0", "six==1.17.0", "croniter==7.0.0"))
    play = [{"hosts": "localhost", "connection": "local", "gather_facts": False,
             "vars": {"ansible_python_interpreter": sys.executable, "runner_zookeeper_hosts": ["zk1:2181"],
                      "runner_venv": str(tmp_path / "venv"), "runner_link": str(tmp_path / "bin" / "zoo-locked"),
                      "runner_config_dir": str(tmp_path / "etc"), "runner_package_hashes": hashes},
             "roles": ["zoolocked.cron.runner"]}]
    (tmp_path / "play.yml").write_text(yaml.safe_dump(play))
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=collections_path, ANSIBLE_NOCOLOR="1",
               ANSIBLE_LOCALHOST_WARNING="0", ANSIBLE_INVENTORY_UNPARSED_WARNING="0")
    result = subprocess.run([os.path.join(os.path.dirname(sys.executable), "ansible-playbook"),
                             str(tmp_path / "play.yml")], capture_output=True, text=True, env=env, timeout=300,
                            check=False)
    assert result.returncode != 0, result.stdout
    fatal = [line for line in result.stdout.splitlines() if line.startswith("fatal: [localhost]: FAILED! => {")]
    assert fatal and "Check that every pinned package has the hash of its wheel" in result.stdout, result.stdout
    message = json.loads(fatal[0].split("=> ", 1)[1])["msg"]
    assert message.startswith("runner_package_hashes has no valid hash for kazoo==2.11.0, croniter==7.0.0, "
                              "six==1.17.0: "), message
    assert "sha256:HEX" in message and "requirements/runner.lock" in message
    assert "Traceback" not in result.stdout + result.stderr
    assert sorted(os.listdir(str(tmp_path))) == ["play.yml"], "the role changed something before refusing"
    bad_input_table.add("role runner", "runner_package_hashes without a valid sha256 for some pins (kazoo: md5, "
                        "six: a string, croniter: missing)", "play failed", message,
                        "no virtualenv, configuration or link created (the check runs before any change)")
