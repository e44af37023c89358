"""The bench harness runs end to end (smoke test: speed itself is never asserted)."""

import json
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_bench_quick_writes_tables_and_json(tmp_path):
    out = tmp_path / "bench.json"
    r = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--filter", "^add|cross_entropy fwd 128",
         "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, check=True,
    )
    assert "Copy bandwidth" in r.stdout and "| gradfuse |" in r.stdout
    report = json.loads(out.read_text())
    names = [c["name"] for c in report["cases"]]
    assert names == ["cross_entropy fwd 128x10", "add 4-element requires_grad"]
    for case in report["cases"]:
        for res in case["results"].values():
            assert res["min_s"] > 0 and res["median_s"] >= res["min_s"]
    assert report["copy_bandwidth"]["gbs"] > 0


def test_bench_rejects_a_filter_that_matches_nothing():
    r = subprocess.run([sys.executable, "-m", "bench", "--filter", "no-such-case"], cwd=ROOT,
                       capture_output=True, text=True)
    assert r.returncode == 2 and "matches no case" in r.stderr
