"""No control character reaches /etc/cron.d/zoo-locked (issue 18, item 9).

A newline in any field that ends up in the file would end a cron line early: Debian's cron then rejects the
line, and with it the whole file, so every job of every node stops. Each field is refused with a message naming
the field and the fix; the checks match the whole text (``$`` alone also matches before a final newline).
"""

import re

import pytest

GOOD = {"name": "j", "schedule": "*/5 * * * *", "command": "true"}
# Control characters: line ends, NUL, vertical tab, form feed, ESC, DEL, and a C1 control (NEL).
CONTROLS = ["\n", "\r", "\0", "\x0b", "\x0c", "\x1b", "\x7f", "\x85"]
# Where a control character can go, and the field the message must name.
FIELDS = {
    "name": (lambda c: {"jobs": [dict(GOOD, name="j" + c)]}, "name"),
    "schedule": (lambda c: {"jobs": [dict(GOOD, schedule="*/5 * * * *" + c)]}, "schedule"),
    "schedule inside": (lambda c: {"jobs": [dict(GOOD, schedule="*/5" + c + "* * * *")]}, "schedule"),
    "command": (lambda c: {"jobs": [dict(GOOD, command="echo a" + c + "b")]}, "command"),
    "command end": (lambda c: {"jobs": [dict(GOOD, command="true" + c)]}, "command"),
    "user": (lambda c: {"jobs": [dict(GOOD, user="root" + c)]}, "user"),
    "job environment name": (lambda c: {"jobs": [dict(GOOD, environment={"TOKEN" + c: "x"})]}, "environment"),
    "job environment value": (lambda c: {"jobs": [dict(GOOD, environment={"TOKEN": "x" + c + "y"})]},
                              "environment"),
    "default user": (lambda c: {"jobs": [GOOD], "defaults": {"user": "root" + c}}, "user"),
    "file environment name": (lambda c: {"jobs": [GOOD], "environment": {"MAILTO" + c: "ops@example.com"}},
                              "crontab_environment"),
    "file environment value": (lambda c: {"jobs": [GOOD], "environment": {"MAILTO": "ops" + c + "@example.com"}},
                               "crontab_environment"),
    "runner": (lambda c: {"jobs": [GOOD], "runner": "/usr/local/bin/zoo-locked" + c}, "crontab_runner"),
    "metrics_dir": (lambda c: {"jobs": [GOOD], "metrics_dir": "/var/lib/metrics" + c}, "crontab_metrics_dir"),
}


def _problems(crontab, case):
    case = dict(case)
    return crontab.problems(case.pop("jobs"), **case)


@pytest.mark.parametrize("control", CONTROLS, ids=[repr(c) for c in CONTROLS])
@pytest.mark.parametrize("where", sorted(FIELDS))
def test_every_rendered_field_refuses_control_characters(crontab, where, control):
    make, field = FIELDS[where]
    found = _problems(crontab, make(control))
    assert found, "%s with %r was accepted" % (where, control)
    mentions = [m for m in found if re.search(r"(^|: )%s: " % re.escape(field), m)]
    assert mentions, (field, found)
    with pytest.raises(crontab.CrontabError):
        case = make(control)
        crontab.render(case.pop("jobs"), **case)


@pytest.mark.parametrize("case, words", [
    # The cases of the issue: "$" matched before a final newline.
    ({"jobs": [GOOD], "environment": {"MAILTO\n": "ops@example.com"}},
     ["crontab_environment: 'MAILTO\\n' is not a valid variable name", "A-Z a-z 0-9 _"]),
    ({"jobs": [dict(GOOD, user="root\n")]},
     ["user: 'root\\n' is not a valid user name", "1-32 of A-Z a-z 0-9 _ . -"]),
    ({"jobs": [dict(GOOD, environment={"TOKEN\n": "x"})]},
     ["environment: 'TOKEN\\n' is not a valid variable name", "not starting with a digit"]),
    ({"jobs": [GOOD], "runner": "/usr/local/bin/zoo-locked\n"},
     ["crontab_runner: '/usr/local/bin/zoo-locked\\n' is not an absolute path on one line",
      "such as /usr/local/bin/zoo-locked"]),
    # The fix is named with the field.
    ({"jobs": [dict(GOOD, command="printf '\x1b[2J'")]},
     ["command: contains the control character U+001B", "printf escapes"]),
    ({"jobs": [dict(GOOD, schedule="*/5 * * * *\n")]},
     ["schedule: contains a newline", "write the schedule on one line"]),
    ({"jobs": [dict(GOOD, environment={"TOKEN": "a\rb"})]},
     ["environment: TOKEN contains a carriage return", "from a file"]),
])
def test_messages_name_the_field_and_the_fix(crontab, case, words):
    found = _problems(crontab, case)
    assert len(found) == 1, found
    for word in words:
        assert word in found[0], (word, found[0])


def test_file_problems_are_reported_together(crontab):
    found = _problems(crontab, {"jobs": [GOOD], "runner": "zoo-locked", "metrics_dir": "/m\n",
                                "environment": {"MAILTO\n": "x", "PATH": "/bin\n"}})
    assert [m.split(":")[0] for m in found] == ["crontab_runner", "crontab_metrics_dir", "crontab_environment",
                                                "crontab_environment"], found


def test_plain_words_are_whole_words(crontab):
    # A word is left unquoted only when all of it is plain: a trailing newline is not.
    assert crontab._word("/usr/local/bin/zoo-locked") == "/usr/local/bin/zoo-locked"
    assert crontab._word("a\n") != "a\n" and crontab._word("a\n").startswith("'")


def test_tabs_stay_allowed_where_cron_and_the_shell_take_them(crontab):
    text = crontab.render([dict(GOOD, schedule="*/5\t*\t*\t*\t*", command="printf 'a\tb'",
                                environment={"SEP": "\t"})], environment={"X": "a\tb"})
    assert "*/5 * * * * root" in text
    controls = [c for c in text if (ord(c) < 32 and c not in "\n\t") or 0x7f <= ord(c) <= 0x9f]
    assert controls == []
