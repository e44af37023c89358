"""Command line: ``gradfuse info`` and ``gradfuse demo``."""

from __future__ import annotations

import argparse
import sys


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="gradfuse", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="print the build configuration (= gf.show_config())")
    demo = sub.add_parser(
        "demo", help="softmax regression on the 8x8 digits with a hand-written SGD loop"
    )
    demo.add_argument("--epochs", type=int, default=30)
    demo.add_argument("--lr", type=float, default=0.1)
    demo.add_argument("--batch-size", type=int, default=64)
    demo.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.command == "info":
        from ._config import show_config

        show_config()
        return 0
    from .examples import digits_softmax

    return digits_softmax.run(epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
                              seed=args.seed)


if __name__ == "__main__":
    sys.exit(main())
