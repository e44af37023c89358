"""gradfuse's benchmark harness (DESIGN.md, 'Measured, not assumed').

Run from the repository root::

    python -m bench                    # every case, a few minutes on 2 cores
    python -m bench --quick            # fewer repeats, well under a minute
    python -m bench --filter cross     # only cases whose name matches the regex
    python -m bench --threads 1 --json /tmp/bench.json

Each case times gradfuse, a numpy reference and (when it imports) PyTorch in the same run,
next to this machine's measured copy bandwidth, so a number is read as a fraction of what the
memory system can do rather than in isolation.

Adding a family: write ``bench/bench_<family>.py`` exposing ``CASES``, a list of
:class:`bench.harness.Case`, and add the module to ``MODULES`` in ``bench/__main__.py``.
"""
