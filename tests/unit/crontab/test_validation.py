"""Every problem is reported at once, each message naming the job and the field."""

import pytest


def problems(crontab, jobs, **kwargs):
    return crontab.problems(jobs, **kwargs)


def job(**fields):
    base = {"name": "j", "schedule": "* * * * *", "command": "true"}
    base.update(fields)
    return {k: v for k, v in base.items() if v is not None}


def test_valid_jobs_have_no_problems(crontab):
    assert problems(crontab, [job(), job(name="k", lock="none", user="app", environment={"A": "1"})]) == []


@pytest.mark.parametrize("fields, field, words", [
    ({"name": None}, "name", "missing"),
    ({"name": ".hidden"}, "name", "not a valid lock name"),
    ({"name": "a b"}, "name", "not a valid lock name"),
    ({"name": "x" * 101}, "name", "not a valid lock name"),
    ({"schedule": None}, "schedule", "missing"),
    ({"schedule": "* * * *"}, "schedule", "five fields"),
    ({"schedule": "60 * * * *"}, "schedule", "minute field"),
    ({"schedule": "* 24 * * *"}, "schedule", "hour field"),
    ({"schedule": "* * 0 * *"}, "schedule", "day of month field"),
    ({"schedule": "* * * 13 *"}, "schedule", "month field"),
    ({"schedule": "* * * * 8"}, "schedule", "day of week field"),
    ({"schedule": "*/0 * * * *"}, "schedule", "step"),
    ({"schedule": "5/10 * * * *"}, "schedule", "range"),
    ({"schedule": "10-5 * * * *"}, "schedule", "backwards"),
    ({"schedule": "@sometimes"}, "schedule", "unknown keyword"),
    ({"schedule": "* * * foo *"}, "schedule", "month field"),
    ({"command": None}, "command", "missing"),
    ({"command": "   "}, "command", "empty"),
    ({"command": "echo a\necho b"}, "command", "newline"),
    ({"command": "echo a\rb"}, "command", "carriage return"),
    ({"command": ["echo", "a"]}, "command", "expected a string"),
    ({"user": "bad user"}, "user", "not a valid user name"),
    ({"lock": "shared"}, "lock", "not one of exclusive, none"),
    ({"wait": -1}, "wait", "not a number of seconds"),
    ({"wait": "soon"}, "wait", "not a number of seconds"),
    ({"wait": True}, "wait", "not a number of seconds"),
    ({"timeout": 0}, "timeout", "above 0"),
    ({"kill_after": 0}, "kill_after", "above 0"),
    ({"lock": "none", "wait": 5}, "wait", "only applies to jobs with lock 'exclusive'"),
    ({"lock": "none", "wait": "auto"}, "wait", "only applies to jobs with lock 'exclusive'"),
    ({"wait": "later"}, "wait", "not a number of seconds >= 0, or 'auto'"),
    ({"slots": "yes"}, "slots", "'yes' is not true or false"),
    ({"retry_failed": 1}, "retry_failed", "1 is not true or false"),
    ({"lock": "none", "slots": True}, "slots", "only applies to jobs with lock 'exclusive'"),
    ({"slots": False, "retry_failed": True}, "retry_failed", "only applies to jobs with slots"),
    ({"slots": False, "max_delay": 60}, "max_delay", "only applies to jobs with slots"),
    ({"schedule": "@reboot", "max_delay": 60}, "max_delay", "only applies to jobs with slots"),
    ({"max_delay": 0}, "max_delay", "not a number of seconds above 0"),
    ({"schedule": "0 0 30 2 *"}, "schedule", "never fires"),
    ({"lock": "none", "timeout": 5}, "timeout", "only applies"),
    ({"environment": "A=1"}, "environment", "expected a mapping"),
    ({"environment": {"1A": "x"}}, "environment", "not a valid variable name"),
    ({"environment": {"A": "x\ny"}}, "environment", "newline"),
    ({"environment": {"A": None}}, "environment", "expected a string"),
    ({"state": "gone"}, "state", "not one of present, absent"),
    ({"bogus": 1}, "bogus", "unknown key"),
])
def test_each_problem_names_the_job_and_the_field(crontab, fields, field, words):
    found = problems(crontab, [job(), job(name="bad" if "name" not in fields else fields["name"],
                                          **{k: v for k, v in fields.items() if k != "name"})])
    assert len(found) == 1, found
    message = found[0]
    if fields.get("name", "bad") == "bad":
        assert message.startswith("job 'bad' (crontab_jobs[1]): %s: " % field), message
    else:
        assert "(crontab_jobs[1]): %s: " % field in message or message.startswith("crontab_jobs[1]"), message
    assert words in message


def test_duplicate_names(crontab):
    found = problems(crontab, [job(name="same"), job(name="other"), job(name="same")])
    assert found == ["job 'same' (crontab_jobs[2]): name: duplicate; crontab_jobs[0] has the same name"]


def test_all_problems_at_once(crontab):
    found = problems(crontab, [job(name="a", schedule="bad", lock="x"), job(name="b", command="a\nb")])
    assert [m.split(":")[0] + ":" + m.split(":")[1] for m in found] == [
        "job 'a' (crontab_jobs[0]): schedule", "job 'a' (crontab_jobs[0]): lock",
        "job 'b' (crontab_jobs[1]): command"]


def test_absent_jobs_need_only_a_name_but_are_still_checked(crontab):
    assert problems(crontab, [{"name": "old", "state": "absent"}]) == []
    assert problems(crontab, [{"name": "old", "state": "absent", "sheduel": "x"}]) == [
        "job 'old' (crontab_jobs[0]): sheduel: unknown key; jobs accept name, schedule, command, user, lock, "
        "wait, timeout, kill_after, slots, max_delay, retry_failed, environment, state"]


def test_not_a_list_or_not_a_mapping(crontab):
    assert problems(crontab, {"name": "x"}) == ["crontab_jobs: expected a list of jobs, got dict"]
    assert problems(crontab, ["echo hi"])[0].startswith("crontab_jobs[0]: expected a job")


@pytest.mark.parametrize("schedule", [
    "* * * * *", "*/5 * * * *", "0 0 1 1 0", "59 23 31 12 7", "0-59/15 1,2,3 1-31/2 jan-mar MON-fri",
    "@hourly", "@daily", "@weekly", "@monthly", "@yearly", "@annually", "@midnight", "@reboot", "0 9 * * sun",
])
def test_valid_schedules(crontab, schedule):
    assert crontab.schedule_errors(schedule) == []


def test_defaults_do_not_apply_to_unlocked_jobs(crontab):
    jobs = crontab.normalize_jobs([job(lock="none")], {"wait": 0, "timeout": 60})
    assert jobs[0]["wait"] is None and jobs[0]["timeout"] is None
