"""``python -m bench``: run the selected cases, print markdown tables, write JSON."""

from __future__ import annotations

import os

# gradfuse and PyTorch can share one libgomp (the system's); gradfuse alone would make its
# idle workers sleep (gradfuse/_backend.py), which PyTorch would then inherit. The bench
# compares kernels, so both keep libgomp's default wait policy here.
os.environ.setdefault("GRADFUSE_OMP_PASSIVE", "0")

import argparse
import datetime
import re
import sys
from pathlib import Path

import gradfuse as gf
from gradfuse._config import config

from . import (
    bench_activations,
    bench_data,
    bench_init,
    bench_loss,
    bench_norms,
    bench_optim,
    bench_scale,
    bench_tensor,
    bench_train,
    bench_trainer,
)
from .harness import copy_bandwidth, format_table, import_torch, run_case, write_json

MODULES = [
    bench_loss,
    bench_tensor,
    bench_activations,
    bench_norms,
    bench_init,
    bench_optim,
    bench_scale,
    bench_data,
    bench_trainer,
    bench_train,
]

DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "latest.json"

# (seconds per implementation, minimum samples, copy-bandwidth repeats)
FULL = (0.5, 5, 10)
QUICK = (0.05, 3, 5)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Time gradfuse, numpy and PyTorch side by side against this machine's "
        "copy bandwidth; print markdown tables and write JSON.")
    parser.add_argument("--filter", metavar="PATTERN",
                        help="run only cases whose name matches this regex (case-insensitive)")
    parser.add_argument("--quick", action="store_true",
                        help="about 10x shorter timing per case (whole run well under a minute)")
    parser.add_argument("--json", metavar="PATH", type=Path, default=DEFAULT_JSON,
                        help="where to write the results (default: bench/results/latest.json)")
    parser.add_argument("--threads", metavar="N", type=int,
                        help="threads for gradfuse and PyTorch (default: gradfuse's current)")
    args = parser.parse_args(argv)

    if args.threads is not None:
        if args.threads < 1:
            parser.error(f"--threads: expected an int >= 1, got {args.threads}")
        gf.set_num_threads(args.threads)
    pattern = re.compile(args.filter or "", re.IGNORECASE)
    cases = [c for m in MODULES for c in m.CASES if pattern.search(c.name)]
    if not cases:
        names = ", ".join(c.name for m in MODULES for c in m.CASES)
        parser.error(f"--filter {args.filter!r} matches no case; cases: {names}")

    threads = gf.get_num_threads()
    torch = import_torch()
    if torch is not None:
        torch.set_num_threads(threads)  # same cores for both, or the ratio means nothing
    budget_s, min_samples, copy_repeats = QUICK if args.quick else FULL

    machine = config()
    copy = copy_bandwidth(threads, copy_repeats)
    per_threads = ", ".join(f"{k} thread{'s' * (k != '1')}: {v:.1f}"
                            for k, v in copy["gbs_by_threads"].items())
    print("# gradfuse benchmarks\n")
    print(f"gradfuse {machine['gradfuse']}, numpy {machine['numpy']}, "
          f"PyTorch {torch.__version__ if torch else 'not installed'}, "
          f"{threads} thread{'s' * (threads != 1)}"
          f"{', --quick' if args.quick else ''}\n")
    print(f"**Copy bandwidth: {copy['gbs']:.1f} GB/s** (np.copyto between two 256 MiB float32 "
          f"arrays, read+write bytes, best of {copy_repeats}; {per_threads})\n")
    sys.stdout.flush()

    records = []
    for case in cases:
        record = run_case(case, torch is not None, budget_s, min_samples, copy["gbs"])
        print(format_table(record), flush=True)
        records.append(record)

    write_json(args.json, {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine,
        "torch": torch.__version__ if torch else None,
        "threads": threads,
        "quick": args.quick,
        "copy_bandwidth": copy,
        "cases": records,
    })
    print(f"results written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
