# -*- coding: utf-8 -*-
"""The scale benchmark (tests/bench/scale.py, `make bench`) in its quick form: 2 and 4 nodes firing 5 jobs for one
slot on a real three-server ensemble, then 5 and 10 held locks. Each slot must run exactly once per job, and every
figure the benchmark exists for must be printed (about 25 s)."""

import os
import re
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.mark.timeout(180)
def test_scale_quick():
    proc = subprocess.run([sys.executable, os.path.join(HERE, "scale.py"), "--quick"], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, timeout=170, check=False)
    out = proc.stdout
    print(out)
    assert proc.returncode == 0, "exit %d\n%s\n%s" % (proc.returncode, out, proc.stderr[-3000:])
    # The slot table: one row per node count, the runs of each of the 5 jobs in the third column.
    # Columns: nodes, runners, attempts per job (the run records), COMMANDs started per job, decision p50, p99.
    rows = re.findall(r"^\| (\d+) \| (\d+) \| ([\d, ]+) \| ([\d, ]+) \| ([\d.]+) \| ([\d.]+) \|", out, re.M)
    assert [(int(n), int(r)) for n, r, dummy, dummy_s, dummy_p50, dummy_p99 in rows] == [(2, 10), (4, 20)], out
    for dummy_n, dummy_r, runs, started, p50, p99 in rows:
        assert runs == "1, 1, 1, 1, 1", "a slot ran other than exactly once: %s" % runs
        assert all(n in ("0", "1") for n in started.split(", ")), "a COMMAND started twice: %s" % started
        assert 0 < float(p50) <= float(p99), (p50, p99)
    # Held locks: K = 0 (idle), 5 and 10, with no transaction in the window, and the fit and the verdict.
    # Columns: started, holding in the window, lost before / in it, requests/s, leader's, followers', transactions.
    held = re.findall(r"^\| (0|5|10) \| [\d.]+ \| \d+ / \d+ \| ([\d.]+) \| [\d.]+ \| [\d.]+ \| (\d+) \|", out,
                      re.M)
    assert [k for k, dummy_req, dummy_txn in held] == ["0", "5", "10"], out
    assert all(txn == "0" for dummy_k, dummy_req, txn in held), held
    assert float(held[2][1]) > float(held[1][1]) > 0, "the requests/s of held locks did not grow with them: %s" % held
    for figure in ("How it grows", "runner waiting", "guardian holding", "Requests: least squares over K",
                   "Extrapolated to 1000 held locks",
                   "runs per slot: 2 nodes [1, 1, 1, 1, 1]; 4 nodes [1, 1, 1, 1, 1] (must all be 1): met"):
        assert figure in out, figure
