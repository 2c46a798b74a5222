# Copyright: zoo-locked maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Validation and rendering of the cluster crontab (/etc/cron.d/zoo-locked).

Private to the collection (the leading underscore): used by the ``zoolocked.cron.crontab_*`` filters that the
``zoolocked.cron.crontab`` role calls on the controller. Standard library only, and no host-specific input:
the same jobs always render to the same bytes, which is what keeps the file identical on every node.

Two layers of interpretation stand between a job's ``command`` and what finally runs, and both are handled:

1. cron itself cuts the command at the first unescaped ``%`` (the rest becomes stdin), turns ``\\%`` into
   ``%`` (Debian's cron also ``\\\\`` into ``\\``), and hands the remaining line to ``/bin/sh -c``;
2. that shell parses the line once. The runner (``zoo-locked run NAME -- ARGV``) then execs ARGV without a
   shell, so the line ends in ``/bin/sh -c 'COMMAND'`` and COMMAND is parsed exactly once, by that inner
   shell, as if typed at a prompt.
"""

from __future__ import annotations

import math
import re

from ._config import check_lock_name

JOB_KEYS = ("name", "schedule", "command", "user", "lock", "wait", "timeout", "kill_after", "slots", "max_delay",
            "retry_failed", "environment", "state")
LOCK_MODES = ("exclusive", "none")
STATES = ("present", "absent")
SPECIAL_SCHEDULES = ("@reboot", "@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly")

# Every pattern is matched against the whole text (fullmatch): with re.match, "$" also matches before a final
# newline, and "MAILTO\n" would pass as a name and break the file (cron then ignores all of it).
# Portable user names (POSIX plus the usual Debian and systemd allowances); existence is checked on the nodes.
USER_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,31}")
ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Control characters (C0 but the tab, DEL, C1): a newline or carriage return ends a cron line early, a NUL cuts
# it, and the others are never meant in a crontab (an escape sequence pasted from a terminal, say). The tab is a
# blank to cron and the shell, and stays allowed.
CONTROL_RE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f]")
CONTROL_NAMES = {"\n": "a newline", "\r": "a carriage return", "\0": "a NUL byte"}

# The runner's own default for --kill-after (seconds), used to size the automatic wait.
RUNNER_KILL_AFTER = 10
# Automatic wait, on top of the job's timeout and kill delay: covers the session timeout of a holder that died
# just before its timeout, and the seconds between the nodes' cron firings.
DEFAULT_WAIT_MARGIN = 60

# Vixie/Debian cron reads at most MAX_COMMAND (1000) bytes of a command; longer ones are cut, not refused.
MAX_LINE = 999

# (lowest, highest, names) for minute, hour, day of month, month, day of week.
_FIELDS = (
    ("minute", 0, 59, None),
    ("hour", 0, 23, None),
    ("day of month", 1, 31, None),
    ("month", 1, 12, ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")),
    ("day of week", 0, 7, ("sun", "mon", "tue", "wed", "thu", "fri", "sat")),
)
_ITEM_RE = re.compile(r"(?:(\*)|([A-Za-z0-9]+)(?:-([A-Za-z0-9]+))?)(?:/([0-9]+))?")
_WORD_RE = re.compile(r"[A-Za-z0-9_./=:@+,-]+")

HEADER = (
    "# /etc/cron.d/zoo-locked: managed by Ansible (role zoolocked.cron.crontab); local changes are overwritten.\n"
    "# The same file is installed on every cron node. Jobs with lock 'exclusive' run through the zoo-locked\n"
    "# runner, which holds a cluster-wide ZooKeeper lock named after the job while the command runs.\n"
)


class CrontabError(ValueError):
    """Invalid jobs; ``errors`` lists one message per problem, each naming the job and the field."""

    def __init__(self, errors):
        self.errors = list(errors)
        super().__init__("\n".join(self.errors))


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _number(value):
    """Seconds as given in YAML or INI inventories (``30``, ``2.5``, ``"30"``); None when not a number."""
    if _is_number(value):
        number = value
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            return None
    else:
        return None
    if not math.isfinite(number):
        return None
    return int(number) if float(number).is_integer() else float(number)


def _forbidden(text):
    """What control characters ``text`` holds, each named once ("a newline", "the control character U+001B")."""
    labels = []
    for char in CONTROL_RE.findall(text):
        label = CONTROL_NAMES.get(char, "the control character U+%04X" % ord(char))
        if label not in labels:
            labels.append(label)
    return labels


def _field_value(token, names):
    if token.isdigit():
        return int(token)
    if names and token.lower() in names:
        return names.index(token.lower()) + (1 if len(names) == 12 else 0)
    return None


def schedule_errors(schedule):
    """Problems with a cron schedule: five fields, or one of the @ keywords. Empty list when valid."""
    if not isinstance(schedule, str):
        return ["expected a string such as '*/5 * * * *' or '@hourly', got %s" % type(schedule).__name__]
    controls = _forbidden(schedule)
    if controls:
        return ["contains %s; write the schedule on one line, its fields separated by spaces (got %r)"
                % (" and ".join(controls), schedule)]
    fields = schedule.split()
    if len(fields) == 1 and fields[0].startswith("@"):
        if fields[0] in SPECIAL_SCHEDULES:
            return []
        return ["unknown keyword %r; expected one of %s" % (fields[0], ", ".join(SPECIAL_SCHEDULES))]
    if len(fields) != 5:
        return ["expected five fields (minute hour day-of-month month day-of-week) or one of %s, got %r"
                % (", ".join(SPECIAL_SCHEDULES), schedule)]
    errors = []
    for text, (label, low, high, names) in zip(fields, _FIELDS):
        for item in text.split(","):
            match = _ITEM_RE.fullmatch(item)
            if not match:
                errors.append("%s field %r: %r is not '*', a value, a range 'a-b', or either with '/step'"
                              % (label, text, item))
                continue
            star, first, last, step = match.groups()
            if step is not None and int(step) == 0:
                errors.append("%s field %r: a step must be at least 1" % (label, text))
            if star:
                continue
            if step is not None and last is None:
                # Debian's cron rejects 'a/step'; cronie reads it as 'a-<max>/step'. Say what is portable.
                errors.append("%s field %r: write a step with a range ('%s-%d/%s') or '*/%s'"
                              % (label, text, first, high, step, step))
                continue
            bounds = []
            for token in (first, last):
                if token is None:
                    continue
                value = _field_value(token, names)
                if value is None or not low <= value <= high:
                    errors.append("%s field %r: %r is not in %d-%d%s"
                                  % (label, text, token, low, high, " or a name" if names else ""))
                    break
                bounds.append(value)
            else:
                if len(bounds) == 2 and bounds[0] > bounds[1]:
                    errors.append("%s field %r: range %s-%s goes backwards" % (label, text, first, last))
    return errors


def _slot_schedule_errors(schedule):
    """What the runner's --schedule (croniter) would refuse in a schedule the cron checks above accept."""
    from ._slots import check_schedule  # pylint: disable=import-outside-toplevel

    problem = check_schedule(schedule)
    if problem and "croniter" in problem and "bad schedule" not in problem:
        return ["the crontab role needs the Python library croniter on the controller for jobs with slots "
                "(pip install -r requirements/runner.txt), or set slots: false (%s)" % problem]
    if problem:
        return [problem]
    from croniter import CroniterBadDateError  # pylint: disable=import-outside-toplevel
    from ._slots import shortest_period  # pylint: disable=import-outside-toplevel

    try:
        shortest_period(schedule)
    except CroniterBadDateError:
        return ["%r never fires: no date matches it (for example the 30th of February)" % (schedule,)]
    return []


def auto_wait(job, margin=None):
    """Seconds the other nodes wait for an exclusive job's lock, sized to the job (``wait: auto``).

    Without slots, waiting would run the job again after the holder finished: 0. With slots a waiter only takes
    over a slot whose holder died, and is useless once the slot is too old to run (one period, the runner's
    default --max-delay): the shortest period of the schedule, or less when the job's timeout says it ends
    sooner (timeout + kill delay + ``margin``).
    """
    if job["lock"] != "exclusive" or not job["slots"]:
        return 0
    from ._slots import shortest_period  # pylint: disable=import-outside-toplevel

    wait = shortest_period(job["schedule"])
    if job.get("max_delay") is not None:
        wait = min(wait, job["max_delay"])
    if job.get("timeout") is not None:
        margin = DEFAULT_WAIT_MARGIN if margin is None else margin
        kill_after = RUNNER_KILL_AFTER if job.get("kill_after") is None else job["kill_after"]
        wait = min(wait, job["timeout"] + kill_after + margin)
    return int(math.ceil(wait))


class _Problems:
    """Collects "WHERE: FIELD: MESSAGE" lines for one job."""

    def __init__(self, errors, where):
        self.errors = errors
        self.where = where

    def __call__(self, field, message):
        self.errors.append("%s: %s: %s" % (self.where, field, message))


def normalize_jobs(jobs, defaults=None):
    """Validate the job list and return the jobs to install, in order, with every key filled in.

    ``defaults`` may give ``user``, ``lock``, ``wait``, ``timeout``, ``kill_after``, ``slots``, ``max_delay`` and
    ``retry_failed`` for jobs that do not, and ``wait_margin`` (see auto_wait). Jobs with ``state: absent`` are
    validated (so a typo is not silently ignored) and left out.
    Raises CrontabError listing every problem found, each naming the job and the field.
    """
    defaults = dict(defaults or {})
    if jobs is None:
        jobs = []
    if not isinstance(jobs, (list, tuple)):
        raise CrontabError(["crontab_jobs: expected a list of jobs, got %s" % type(jobs).__name__])
    errors = []
    seen = {}
    result = []
    for index, job in enumerate(jobs):
        where = "crontab_jobs[%d]" % index
        if not isinstance(job, dict):
            errors.append("%s: expected a job (a mapping with name, schedule, command...), got %s"
                          % (where, type(job).__name__))
            continue
        name = job.get("name")
        if isinstance(name, str) and name:
            where = "job %r (crontab_jobs[%d])" % (name, index)
        job_errors = []
        problem = _Problems(job_errors, where)

        unknown = sorted(str(key) for key in job if key not in JOB_KEYS)
        for key in unknown:
            problem(key, "unknown key; jobs accept %s" % ", ".join(JOB_KEYS))

        if name is None:
            problem("name", "missing; every job needs a name (it is also its lock name)")
        elif not isinstance(name, str) or check_lock_name(name):  # the runner's own rule
            problem("name", "%r is not a valid lock name: 1-100 characters of A-Z a-z 0-9 . _ -, "
                            "not starting with '.'" % (name,))
        elif name in seen:
            problem("name", "duplicate; crontab_jobs[%d] has the same name" % seen[name])
        else:
            seen[name] = index

        state = job.get("state", "present")
        if state not in STATES:
            problem("state", "%r is not one of %s" % (state, ", ".join(STATES)))
        present = state != "absent"

        schedule = job.get("schedule")
        if schedule is None:
            if present:
                problem("schedule", "missing")
        else:
            for message in schedule_errors(schedule):
                problem("schedule", message)

        command = job.get("command")
        if command is None:
            if present:
                problem("command", "missing")
        elif not isinstance(command, str):
            problem("command", "expected a string (a shell command line), got %s" % type(command).__name__)
        elif not command.strip():
            problem("command", "empty")
        else:
            for label in _forbidden(command):
                problem("command", "contains %s; cron commands are one line of text (use a script for more, or "
                                   "printf escapes such as \\033 for control characters)" % label)

        user = job.get("user", defaults.get("user", "root"))
        if not isinstance(user, str) or not USER_RE.fullmatch(user):
            problem("user", "%r is not a valid user name: 1-32 of A-Z a-z 0-9 _ . -, not starting with . or -"
                    % (user,))

        lock = job.get("lock", defaults.get("lock", "exclusive"))
        if lock not in LOCK_MODES:
            problem("lock", "%r is not one of %s" % (lock, ", ".join(LOCK_MODES)))

        options = {}
        for key in ("slots", "retry_failed"):
            explicit = job.get(key) is not None
            value = job.get(key) if explicit else defaults.get(key, key == "slots")
            if not isinstance(value, bool):
                problem(key, "%r is not true or false" % (value,))
            elif lock == "none":
                if explicit:
                    problem(key, "only applies to jobs with lock 'exclusive' (this one has lock 'none')")
            else:
                options[key] = value
        slotted = bool(options.get("slots")) and isinstance(schedule, str) and schedule.strip() != "@reboot"
        if slotted and present and not schedule_errors(schedule):
            for message in _slot_schedule_errors(schedule):
                problem("schedule", message)
        for key, minimum_exclusive in (("wait", False), ("timeout", True), ("kill_after", True),
                                       ("max_delay", True)):
            explicit = job.get(key) is not None
            value = job.get(key) if explicit else defaults.get(key)
            if value is None:
                continue
            if key == "wait" and value == "auto":
                if lock == "exclusive":
                    options[key] = value
                elif explicit:
                    problem(key, "only applies to jobs with lock 'exclusive' (this one has lock 'none')")
                continue
            if key == "max_delay" and lock == "exclusive" and not slotted:
                if explicit:
                    problem(key, "only applies to jobs with slots (slots: true and a schedule other than @reboot)")
                continue
            number = _number(value)
            if number is None or number < 0 or (minimum_exclusive and number == 0):
                problem(key, "%r is not a number of seconds %s" % (
                    value, "above 0" if minimum_exclusive else ">= 0, or 'auto'" if key == "wait" else ">= 0"))
                continue
            if lock == "none":
                # Role-wide defaults simply do not apply to unlocked jobs; a value set on the job is a mistake.
                if explicit:
                    problem(key, "only applies to jobs with lock 'exclusive' (this one has lock 'none')")
                continue
            options[key] = number

        environment = job.get("environment")
        if environment is None:
            environment = {}
        if not isinstance(environment, dict):
            problem("environment", "expected a mapping of variable names to values, got %s"
                    % type(environment).__name__)
            environment = {}
        env = {}
        for var, value in environment.items():
            if not isinstance(var, str) or not ENV_NAME_RE.fullmatch(var):
                problem("environment", "%r is not a valid variable name: A-Z a-z 0-9 _, not starting with a digit"
                        % (var,))
                continue
            if isinstance(value, bool) or value is None or not isinstance(value, (str, int, float)):
                problem("environment", "%s: expected a string, got %s" % (var, type(value).__name__))
                continue
            value = str(value)
            for label in _forbidden(value):
                problem("environment", "%s contains %s; a cron line is one line of text (let the command read "
                                       "such a value from a file)" % (var, label))
            env[var] = value

        if options.get("retry_failed") and not slotted:
            if job.get("retry_failed") is not None:
                problem("retry_failed", "only applies to jobs with slots (slots: true and a schedule other than "
                                        "@reboot)")
            options["retry_failed"] = False
        if job_errors:
            errors.extend(job_errors)
            continue
        if not present:
            continue
        normalized = {
            "name": name,
            "schedule": " ".join(schedule.split()),
            "command": command,
            "user": user,
            "lock": lock,
            "wait": options.get("wait"),
            "timeout": options.get("timeout"),
            "kill_after": options.get("kill_after"),
            "slots": slotted,
            "max_delay": options.get("max_delay"),
            "retry_failed": bool(options.get("retry_failed")),
            "environment": env,
        }
        if normalized["wait"] == "auto":
            normalized["wait"] = auto_wait(normalized, defaults.get("wait_margin"))
        result.append(normalized)
    if errors:
        raise CrontabError(errors)
    return result


def shell_quote(text):
    """Quote ``text`` as one shell word whose backslashes and ``%`` signs cron leaves alone.

    Crons differ on backslashes: Debian's turns ``\\\\`` into ``\\`` and ``\\%`` into ``%``, cronie only the
    latter; both keep a backslash followed by anything else. So the word is a run of single-quoted pieces, a
    piece ending after every backslash and a new one starting before every ``%``: each backslash is then
    followed by a quote, and each ``%`` preceded by one, where cron_escape puts its backslash.
    """
    if text == "":
        return "''"
    pieces = re.findall(r"%?[^\\%]*\\?", text)
    return "".join("'" + piece.replace("'", "'\\''") + "'" for piece in pieces if piece)


def cron_escape(line):
    """Escape every ``%`` for cron, which turns an unescaped one into a newline and ``\\%`` into ``%``.

    The line must come from shell_quote'd words: a backslash followed by anything but a quote would mean
    different things to different crons, so it is refused rather than guessed at.
    """
    for match in re.finditer(r"\\", line):
        if line[match.end():match.end() + 1] != "'":
            raise ValueError("backslash not followed by a quote at %d: %s" % (match.start(), line))
    return line.replace("%", "\\%")


def _seconds(value):
    return repr(value) if isinstance(value, float) else str(value)


def job_argv(job, runner="/usr/local/bin/zoo-locked", shell="/bin/sh", env_command="/usr/bin/env", metrics_dir=None):
    """The command line of a normalized job as a list of words, before any quoting."""
    argv = []
    if job["lock"] == "exclusive":
        argv += [runner, "run", job["name"]]
        if job.get("slots"):
            argv += ["--schedule", job["schedule"]]
        for key, flag in (("wait", "--wait"), ("timeout", "--timeout"), ("kill_after", "--kill-after"),
                          ("max_delay", "--max-delay")):
            if job.get(key) is not None:
                argv += [flag, _seconds(job[key])]
        if job.get("retry_failed"):
            argv.append("--retry-failed")
        if metrics_dir:
            argv += ["--metrics-dir", metrics_dir]
        argv.append("--")
    if job["environment"]:
        argv.append(env_command)
        argv += ["%s=%s" % (var, job["environment"][var]) for var in sorted(job["environment"])]
    argv += [shell, "-c", job["command"]]
    return argv


def _word(word):
    # Plain words stay readable; anything else is quoted.
    if word and _WORD_RE.fullmatch(word):
        return word
    return shell_quote(word)


def env_line(name, value):
    """A cron environment line, NAME="VALUE" (or NAME='VALUE' when the value holds double quotes).

    Cron takes the value between one pair of matching quotes literally (no escapes, no %, no $) and refuses
    the whole file when anything follows the closing quote, so a value cannot hold both kinds of quote; the
    few values cron would alter (trailing blanks, surrounding quotes) are refused rather than changed.
    """
    problems = []
    if not isinstance(name, str) or not ENV_NAME_RE.fullmatch(name):
        problems.append("crontab_environment: %r is not a valid variable name: A-Z a-z 0-9 _, not starting with a "
                        "digit" % (name,))
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        problems.append("crontab_environment: %s: expected a string, got %s" % (name, type(value).__name__))
    else:
        value = str(value)
        controls = ["crontab_environment: %s contains %s; an environment line of cron is one line of text"
                    % (name, label) for label in _forbidden(value)]
        problems += controls
        # Debian's cron unquotes the value, trims trailing blanks, then strips one more pair of matching quotes.
        if controls:
            pass
        elif '"' in value and "'" in value:
            problems.append("crontab_environment: %s: cron cannot read a value holding both ' and \"" % name)
        elif value != value.rstrip():
            problems.append("crontab_environment: %s: cron drops trailing blanks of a value" % name)
        elif len(value) >= 2 and value[0] in "'\"" and value[-1] == value[0]:
            problems.append("crontab_environment: %s: cron strips the quotes around a quoted value" % name)
    if problems:
        raise CrontabError(problems)
    quote = "'" if '"' in value else '"'
    return "%s=%s%s%s" % (name, quote, value, quote)


def render(jobs, runner="/usr/local/bin/zoo-locked", environment=None, defaults=None, metrics_dir=None):
    """The whole cron.d file for ``jobs`` (raw, as the role receives them): validated, deterministic."""
    normalized = normalize_jobs(jobs, defaults)
    # The settings of the whole file: every problem at once.
    errors = []
    if not isinstance(runner, str) or not runner.startswith("/") or _forbidden(runner):
        errors.append("crontab_runner: %r is not an absolute path on one line; give the runner's path on the nodes, "
                      "such as /usr/local/bin/zoo-locked" % (runner,))
    if metrics_dir is not None and (not isinstance(metrics_dir, str) or metrics_dir and (
            not metrics_dir.startswith("/") or _forbidden(metrics_dir))):
        errors.append("crontab_metrics_dir: %r is not an absolute path on one line; give one such as "
                      "/var/lib/node_exporter/textfile, or leave it empty for no metrics" % (metrics_dir,))
    lines = [HEADER]
    if environment:
        if not isinstance(environment, dict):
            raise CrontabError(errors + ["crontab_environment: expected a mapping, got %s"
                                         % type(environment).__name__])
        env_lines = []
        for name in sorted(environment, key=str):
            try:
                env_lines.append(env_line(name, environment[name]) + "\n")
            except CrontabError as exc:
                errors += exc.errors
        lines.append("".join(env_lines))
    if errors:
        raise CrontabError(errors)
    errors = []
    for job in normalized:
        argv = job_argv(job, runner, metrics_dir=metrics_dir)
        # The command itself is always quoted, so that it stands out as one word even when it is one word.
        words = [_word(word) for word in argv[:-1]] + [shell_quote(argv[-1])]
        line = "%s %s %s" % (job["schedule"], job["user"], " ".join(words))
        line = cron_escape(line)
        if len(line) > MAX_LINE:
            errors.append("job %r: command: the cron line would be %d characters, cron reads at most %d; "
                          "put the command in a script" % (job["name"], len(line), MAX_LINE))
            continue
        lines.append("\n# job %s (lock: %s)\n%s\n" % (job["name"], job["lock"], line))
    if errors:
        raise CrontabError(errors)
    if not normalized:
        lines.append("\n# (no jobs)\n")
    return "".join(lines)


def problems(jobs, runner="/usr/local/bin/zoo-locked", environment=None, defaults=None, metrics_dir=None):
    """Everything render() would refuse, as a list of messages; empty when the jobs are fine."""
    try:
        render(jobs, runner=runner, environment=environment, defaults=defaults, metrics_dir=metrics_dir)
    except CrontabError as exc:
        return exc.errors
    return []
