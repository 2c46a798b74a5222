# -*- coding: utf-8 -*-
"""The soak run (tests/soak/soak.py) in short, and a self-test of its checker.

- ``test_checker_*``: the checker fed fabricated histories (no ZooKeeper): a clean one passes, and an overlap, a
  token going backwards, a slot run twice, a bad exit code, an internal error and a leftover contender are each
  reported under their own check. A checker that cannot fail proves nothing.
- ``test_soak_short``: the real thing, over a fixed list of seeds, each a minute of faults (about 70 s with the
  ensemble's start and the settle period); it must find no violation. ``make soak`` is the long form.
"""

import json
import os
import signal
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import soak  # noqa: E402

SEEDS = [1, 2]
SECONDS = 60


# --- the checker ----------------------------------------------------------------------------------------


def proc(job, token, run, first, last, role="main", slot=None, node="n1", ended=True):
    return {"job": job, "token": str(token), "run": run, "first": first, "last": last, "role": role, "slot": slot,
            "node": node, "pid": 1000 + run, "ticks": int((last - first) / 0.025) + 1, "exit": 0 if ended else None,
            "file": "%s.%s.%s.t" % (node, job, role)}


def runner(rid, job, rc, slot=None, asked_exit=0, stderr="", node="n1", signals=()):
    return {"id": rid, "job": job, "rc": rc, "slot": slot, "asked_exit": asked_exit, "stderr": stderr,
            "node": node, "start": 0.0, "end": 1.0, "signals": list(signals)}


def clean_history():
    """Two holders of `short` one after the other, a slot run once (and found done by a second node), a playbook
    hold between two runs, a runner killed by the nemesis, a final check with nothing left."""
    return {
        "folder": "/fabricated",
        "meta": {"seed": 0, "nodes": 2, "duration": 10, "session_timeout": 4.0, "tick_time_ms": 500,
                 "jobs": {"short": {}, "slots": {"slotted": True, "keep": 100}}},
        "procs": [
            proc("short", 100, 1, 10.0, 10.2),
            proc("short", 200, 2, 11.0, 11.2, node="n2"),
            proc("short", 200, 2, 11.05, 12.5, role="daemon", node="n2"),
            proc("slots", 300, 3, 12.0, 12.5, slot="s000001"),
        ],
        "runners": [
            runner(1, "short", 0), runner(2, "short", 0, node="n2"), runner(3, "slots", 0, slot="s000001"),
            runner(4, "slots", 0, slot="s000001", node="n2"), runner(5, "short", 75),
            runner(6, "short", -9, signals=[["KILL", 3.0, False]]),
            runner(7, "short", 3, asked_exit=3), runner(8, "short", 137),
        ],
        "holds": [{"job": "short", "token": 250, "start": 13.0, "end": 14.0, "confirmed": True}],
        "faults": [{"kind": "kill-runner", "target": "run 6", "start": 3.0, "end": 3.0}],
        "records": {"slots": [{"slot": "s000001", "state": "succeeded",
                               "attempts": [{"token": 300, "state": "succeeded", "host": "h", "pid": 1}]}]},
        "final": {"locks": {"short": [], "slots": []}, "runs": {"slots": 1}, "leftover": [],
                  "final_runs": [{"job": "short", "id": 9, "rc": 0, "ticked": True}], "problems": []},
    }


def checks_of(history):
    violations, dummy_stats = soak.check(history)
    return violations, sorted({v["check"] for v in violations})


def test_checker_passes_a_clean_history():
    violations, dummy = checks_of(clean_history())
    assert violations == []
    text = soak.summary(clean_history(), violations, soak.check(clean_history())[1])
    assert "violations: none" in text


def test_checker_reports_an_overlap():
    history = clean_history()
    # A third holder starts while the second one's daemon still ticks (its token is greater: only check 1).
    history["procs"].append(proc("short", 240, 10, 12.0, 12.1, node="n1"))
    history["runners"].append(runner(10, "short", 0))
    violations, checks = checks_of(history)
    assert checks == [1], violations
    assert "ticked until 0.500 s after" in violations[0]["message"] and "daemon" in violations[0]["message"]


def test_checker_reports_an_overlap_with_a_playbook_hold():
    history = clean_history()
    history["procs"].append(proc("short", 270, 11, 13.5, 13.7))
    history["runners"].append(runner(11, "short", 0))
    violations, checks = checks_of(history)
    assert checks == [1], violations
    assert "playbook hold (token 250)" in violations[0]["message"]


def test_checker_reports_a_token_going_backwards():
    history = clean_history()
    history["procs"].append(proc("short", 150, 12, 20.0, 20.2))  # after the hold with token 250
    history["runners"].append(runner(12, "short", 0))
    violations, checks = checks_of(history)
    assert checks == [2], violations
    assert "not greater (150 <= 250)" in violations[0]["message"]


def test_checker_reports_a_slot_run_twice():
    history = clean_history()
    # Another node ran slot s000001 again after it had succeeded, exited 0, and its attempt is not in the record.
    history["procs"].append(proc("slots", 400, 13, 15.0, 15.3, slot="s000001", node="n2"))
    history["runners"].append(runner(13, "slots", 0, slot="s000001", node="n2"))
    violations, checks = checks_of(history)
    assert checks == [3], violations
    messages = " | ".join(v["message"] for v in violations)
    assert "exited 0 2 times" in messages
    assert "no attempt for" in messages
    assert "ran again (tokens [400])" in messages


def test_checker_accepts_the_documented_rerun_after_an_unrecorded_outcome():
    """A run whose outcome could not be recorded (cut off as COMMAND ended) is run again by the next holder: the
    documented at-least-once case. The run ids are in start order, not in the order the COMMANDs ran."""
    history = clean_history()
    history["runners"][2]["stderr"] = ("zoo-locked: error name=slots slot=s000001 exit=0 reason=\"could not record "
                                       "the end of the run (succeeded): ...\"\n")
    history["procs"].append(proc("slots", 400, 2, 15.0, 15.3, slot="s000001", node="n2"))  # run 2 < run 3
    history["runners"][1] = runner(2, "slots", 0, slot="s000001", node="n2")
    history["records"]["slots"][0]["attempts"] = [{"token": 300, "state": "died"}, {"token": 400, "state": "succeeded"}]
    violations, dummy = checks_of(history)
    assert violations == []
    history["runners"][2]["stderr"] = ""
    violations, checks = checks_of(history)
    assert checks == [3] and "runs 3, 2, in that order" in violations[0]["message"], violations


def test_checker_reports_two_succeeded_attempts_in_a_record():
    history = clean_history()
    history["records"]["slots"][0]["attempts"].append({"token": 400, "state": "succeeded", "host": "h", "pid": 2})
    violations, checks = checks_of(history)
    assert checks == [3], violations
    assert "2 succeeded attempts" in violations[0]["message"]


def test_checker_reports_a_slot_not_accounted_for():
    history = clean_history()
    history["runners"].append(runner(14, "slots", 0, slot="s000002"))  # exit 0, yet no record
    violations, checks = checks_of(history)
    assert checks == [3], violations
    assert "no run record" in violations[0]["message"]


def test_checker_checks_pruned_slots_against_their_snapshots():
    history = clean_history()
    history["meta"]["jobs"]["slots"]["keep"] = 1
    # s000001 was pruned once s000002 was made; its last snapshot says it succeeded twice.
    history["records"]["slots"] = [{"slot": "s000002", "state": "succeeded",
                                    "attempts": [{"token": 500, "state": "succeeded"}]}]
    history["runners"].append(runner(21, "slots", 0, slot="s000002"))
    history["procs"].append(proc("slots", 500, 21, 30.0, 30.2, slot="s000002"))
    twice = {"slot": "s000001", "state": "succeeded", "attempts": [{"token": 300, "state": "succeeded"},
                                                                   {"token": 310, "state": "succeeded"}]}
    history["seen"] = {"slots": {"s000001": {"at": 20.0, "czxid": 10, "record": twice},
                                 "s000002": {"at": 31.0, "czxid": 20, "record": history["records"]["slots"][0]}}}
    history["final"]["runs_czxid"] = {"slots": {"s000002": 20}}
    violations, checks = checks_of(history)
    assert checks == [3], violations
    assert "2 succeeded attempts" in violations[0]["message"]
    # Run once this time, but pruning deleted s000001 (czxid 10) and kept an older record (czxid 5).
    history["seen"]["slots"]["s000001"]["record"] = dict(twice, attempts=twice["attempts"][:1])
    history["final"]["runs_czxid"] = {"slots": {"s000002": 5}}
    violations, checks = checks_of(history)
    assert checks == [3], violations
    assert "pruning must delete the oldest first" in violations[0]["message"]


def test_checker_reports_bad_exit_codes_and_internal_errors():
    history = clean_history()
    history["runners"] += [
        runner(15, "short", 42),  # COMMAND was to exit 0
        runner(16, "short", 1, stderr="zoo-locked: internal error: KeyError: 'x' (please report it)\n"),
        runner(17, "short", 70, stderr="Traceback (most recent call last):\n  File ...\n"),
        runner(18, "short", -15),  # a signal the nemesis did not send
        runner(19, "short", 64),  # documented, but nothing here causes it
    ]
    violations, checks = checks_of(history)
    assert checks == [5], violations
    runs = sorted(v["run"] for v in violations)
    assert runs == [15, 16, 16, 17, 18, 19], violations  # run 16: exit 1 and "internal error"


def test_checker_reports_what_is_left_at_the_end():
    history = clean_history()
    history["final"]["locks"]["short"] = ["abc__lock__0000000007"]
    history["final"]["leftover"] = [{"pid": 4242, "what": "python3: ticker.py"}]
    history["final"]["runs"]["slots"] = 101  # --keep 100
    history["final"]["final_runs"][0]["rc"] = 75
    history["runners"].append(runner(20, "short", None))
    violations, checks = checks_of(history)
    assert checks == [4], violations
    assert len(violations) == 5, violations


def test_history_files_are_read_back(tmp_path):
    """The ticker's file format, as load_history reads it: a line cut short by a SIGKILL is ignored."""
    (tmp_path / "ticks").mkdir()
    header = {"node": "n1", "job": "short", "slot": None, "run": 1, "token": "100", "holder": "h:1", "pid": 1,
              "ppid": 0, "pgid": 1, "sid": 1, "role": "main"}
    (tmp_path / "ticks" / "n1.short.main.1.ab.t").write_text(
        "H %s\nS 10.000000\nT 10.000001\nT 10.025000\nG 10.030000\nT 10.050000\nE 10.060000 0\nT 99" % json.dumps(header))
    (tmp_path / "runners.jsonl").write_text(json.dumps(runner(1, "short", 0)) + "\n")
    history = soak.load_history(str(tmp_path))
    [p] = history["procs"]
    assert (p["first"], p["last"], p["exit"], p["termed"], p["ticks"]) == (10.0, 10.06, 0, 1, 6)
    violations, dummy = soak.check(history)
    assert [v["check"] for v in violations] == [4]  # final.json is missing: the run never got to its end


def test_docs_section_is_written_only_after_clean_runs(tmp_path):
    """The figures of runs go between the section's markers (added once at the end), replaced on the next write;
    a run with violations writes nothing."""
    doc = tmp_path / "reliability.md"
    doc.write_text("# Reliability\n\nother text\n")
    history = clean_history()
    violations, stats = soak.check(history)
    assert violations == []
    figs = soak.figures(history, violations, stats)
    assert soak.write_docs([figs, dict(figs, seed=7)], "a test", doc=str(doc))
    text = doc.read_text()
    assert text.startswith("# Reliability\n\nother text\n") and text.count(soak.DOC_TITLE) == 1
    assert "seeds 0, 7" in text and "**Violations: 0.**" in text and "| 0 (ok) | 8 |" in text, text
    assert soak.write_docs([dict(figs, seed=9)], "again", doc=str(doc))
    again = doc.read_text()
    assert "seed 9" in again and "seeds 0, 7" not in again and again.count(soak.DOC_BEGIN) == 1
    assert not soak.write_docs([dict(figs, seed=5, violations=1)], "bad", doc=str(doc))
    assert doc.read_text() == again


# --- the short soak ---------------------------------------------------------------------------------------


FIGURES = {}  # seed: the figures of its run (tests/soak/soak.py --figures)


@pytest.mark.timeout(SECONDS + 200)
@pytest.mark.parametrize("seed", SEEDS)
def test_soak_short(seed, tmp_path):
    figures = str(tmp_path / "figures.json")
    cmd = [sys.executable, os.path.join(HERE, "soak.py"), "--seconds", str(SECONDS), "--seed", str(seed),
           "--no-docs", "--figures", figures]
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        output = proc.communicate(timeout=SECONDS + 180)[0]
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)  # soak.py then stops what it started (runners, servers: own sessions)
        try:
            output = proc.communicate(timeout=60)[0]
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            output = proc.communicate()[0]
        pytest.fail("soak.py --seed %d did not finish in time:\n%s" % (seed, output))
    print(output)
    assert proc.returncode == 0, "soak run with seed %d found violations:\n%s" % (seed, output)
    assert "violations: none" in output
    with open(figures) as handle:
        FIGURES[seed] = json.load(handle)
    # The controller's share through ansible-playbook: at least one hold and one forced release each run.
    controller = FIGURES[seed]["controller"]
    assert controller.get("playbook holds through ansible-playbook"), controller
    assert controller.get("forced releases through ansible-playbook"), controller
    if os.environ.get("ZOO_LOCKED_WRITE_DOCS") == "1" and sorted(FIGURES) == sorted(SEEDS):
        soak.write_docs([FIGURES[s] for s in SEEDS], "the short form in `make test` (tests/soak/test_soak.py)")
