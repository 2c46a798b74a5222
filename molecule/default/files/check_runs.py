"""Check the test jobs' logs on the shared volume, over the minute slots [first, first + 60 * slots).

exclusive.log: one line "HOST START END" per run of the exclusive job (Unix times).
everywhere.log: one line "HOST TIME" per run of the lock: none job.
Prints a JSON report: what ran in each slot, and the problems found (empty when all is well):
  - the exclusive job ran exactly once in every counted slot, and never twice in any slot;
  - no two runs of it overlapped (each started after the previous one ended);
  - the lock: none job ran exactly once per node in every counted slot;
  - with --history NAME: the runner's run record (zoo-locked history) of every counted slot says succeeded,
    after one attempt, by the host that logged the run.
"""

import argparse
import json
import subprocess
import sys
import time


def read(path, fields):
    rows = []
    try:
        with open(path) as handle:
            for number, line in enumerate(handle, 1):
                parts = line.split()
                if len(parts) != fields:
                    rows.append(("?", line.strip(), number))
                    continue
                rows.append(tuple([parts[0]] + [float(p) for p in parts[1:]]))
    except FileNotFoundError:
        pass
    return rows


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--exclusive", required=True)
    parser.add_argument("--everywhere", required=True)
    parser.add_argument("--first-slot", type=int, required=True)
    parser.add_argument("--slots", type=int, required=True)
    parser.add_argument("--hosts", required=True)
    parser.add_argument("--history", help="job whose run records to check (zoo-locked history NAME --json)")
    args = parser.parse_args()
    hosts = sorted(args.hosts.split(","))
    counted = [args.first_slot + 60 * i for i in range(args.slots)]
    problems = []

    runs = read(args.exclusive, 3)
    problems += ["exclusive.log line %d is malformed: %r" % (r[2], r[1]) for r in runs if r[0] == "?"]
    runs = sorted((r for r in runs if r[0] != "?"), key=lambda r: r[1])
    by_slot = {}
    for host, start, end in runs:
        by_slot.setdefault(int(start // 60 * 60), []).append(host)
    for slot, ran in sorted(by_slot.items()):
        if len(ran) > 1:
            problems.append("exclusive job ran %d times in the minute starting %d: %s" % (len(ran), slot, ran))
    for slot in counted:
        if len(by_slot.get(slot, [])) != 1:
            problems.append("exclusive job ran %d times in the minute starting %d (expected once)"
                            % (len(by_slot.get(slot, [])), slot))
    for before, after in zip(runs, runs[1:]):
        if after[1] < before[2]:
            problems.append("runs overlap: %s %.3f-%.3f and %s %.3f-%.3f" % (before + after))

    marks = read(args.everywhere, 2)
    problems += ["everywhere.log line %d is malformed: %r" % (r[2], r[1]) for r in marks if r[0] == "?"]
    everywhere = {}
    for host, when in (m for m in marks if m[0] != "?"):
        everywhere.setdefault(int(when // 60 * 60), []).append(host)
    for slot in counted:
        if sorted(everywhere.get(slot, [])) != hosts:
            problems.append("lock: none job ran on %s in the minute starting %d (expected once on each of %s)"
                            % (sorted(everywhere.get(slot, [])), slot, hosts))

    records = {}
    if args.history:
        result = subprocess.run(["zoo-locked", "history", args.history, "--json", "--limit", "50"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, check=False)
        if result.returncode != 0:
            problems.append("zoo-locked history %s exited %d: %s" % (args.history, result.returncode, result.stderr))
        else:
            records = {run["slot"]: run for run in json.loads(result.stdout)["runs"]}
        for slot in counted:
            slot_id = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(slot))
            record = records.get(slot_id)
            ran = by_slot.get(slot, [])
            if record is None:
                problems.append("no run record for slot %s" % slot_id)
                continue
            attempts = record.get("attempts") or []
            if record.get("state") != "succeeded" or len(attempts) != 1 or [a.get("host") for a in attempts] != ran:
                problems.append("run record of slot %s: state %s, attempts by %s; the log shows runs by %s"
                                % (slot_id, record.get("state"), [a.get("host") for a in attempts], ran))

    json.dump({
        "counted_slots": counted,
        "exclusive": {str(slot): by_slot.get(slot, []) for slot in sorted(set(by_slot) | set(counted))},
        "exclusive_runs": [{"host": h, "start": s, "seconds": round(e - s, 3)} for h, s, e in runs],
        "everywhere": {str(slot): sorted(everywhere.get(slot, [])) for slot in counted},
        "records": {slot: [record.get("state")] + [a.get("host") for a in record.get("attempts") or []]
                    for slot, record in sorted(records.items())},
        "problems": problems,
    }, sys.stdout, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
