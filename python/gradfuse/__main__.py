"""Command line: ``gradfuse compare`` (the optimization study), ``gradfuse train`` (one
configuration), ``gradfuse info`` (the build configuration) and ``gradfuse demo``."""

from __future__ import annotations

import argparse
import sys


def main(argv=None) -> int:
    """The ``gradfuse`` command; returns its exit status. Under ``mpiexec`` with
    ``gf.distributed`` initialized, a rank that fails ends the whole job (MPI Abort) instead
    of exiting alone while the other ranks wait for it."""
    from .distributed._comm import abort_if_failed

    try:
        code = _main(argv)
    except SystemExit as e:  # argparse errors, sys.exit in a subcommand
        abort_if_failed(e.code)
        raise
    abort_if_failed(code)
    return code


def _main(argv) -> int:
    parser = argparse.ArgumentParser(prog="gradfuse", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    from .study import cli as study_cli

    study_cli.build_parsers(sub)
    sub.add_parser("info", help="print the build configuration (= gf.show_config())")
    demo = sub.add_parser(
        "demo", help="train an MLP (or softmax regression) on scikit-learn's bundled 8x8 digits"
    )
    from .examples import digits_mlp as mlp

    demo.add_argument("--model", choices=["mlp", "softmax"], default="mlp",
                      help="mlp: scaler, norm, activation, dropout, fused optimizer and lr "
                           "schedule; softmax: one Linear layer and a hand-written SGD loop")
    demo.add_argument("--epochs", type=int, default=20)
    demo.add_argument("--optimizer", choices=sorted(mlp.OPTIMIZERS), default="adam")
    demo.add_argument("--lr", type=float, default=None,
                      help="default: 1e-3 (adam-like), 0.05 (sgd, adagrad); 0.1 for softmax")
    demo.add_argument("--activation", choices=sorted(mlp.ACTIVATIONS), default="relu")
    demo.add_argument("--norm", choices=sorted(mlp.NORMS), default="batch")
    demo.add_argument("--init", default=None,
                      help="an init scheme by name (gf.nn.init.names()); default: PyTorch's")
    demo.add_argument("--batch-size", type=int, default=64)
    demo.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.command == "compare":
        return study_cli.compare(sub.choices["compare"], args)
    if args.command == "train":
        return study_cli.train(sub.choices["train"], args)
    if args.command == "info":
        from ._config import show_config

        show_config()
        return 0
    if args.model == "softmax":
        from .examples import digits_softmax

        return digits_softmax.run(epochs=args.epochs, lr=0.1 if args.lr is None else args.lr,
                                  batch_size=args.batch_size, seed=args.seed)
    return mlp.run(epochs=args.epochs, optimizer=args.optimizer, lr=args.lr,
                   activation=args.activation, norm=args.norm, init=args.init,
                   batch_size=args.batch_size, seed=args.seed)


if __name__ == "__main__":
    sys.exit(main())
