"""``gradfuse compare`` and ``gradfuse train``: argument parsing and the commands.

Every flag is checked before anything is trained; a bad one stops the command with exit code 2
and a message naming the flag (``--optimizers: unknown value 'adm'; choose from ...``).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import time

from . import config as C

# The default grid of a plain `gradfuse compare`: 5 optimizers x 3 inits x 2 norms x
# 2 activations = 60 configurations x 3 seeds = 180 runs of 20 epochs on the digits, with
# four hidden layers: deep enough that sigmoid without normalization visibly starves the first
# layers of gradient and N(0, 1) weights blow up under SGD (with 128,64 every configuration
# ends above 80%), and about 80 s of CPU in all (docs/training.md, "Study tool").
DEFAULTS = {
    "optimizers": "sgd,momentum,rmsprop,adagrad,adam",
    "init": "xavier,he,normal",
    "norm": "none,batch",
    "activation": "relu,sigmoid",
    "lr_schedule": "none",
    "epochs": 20,
    "seeds": 3,
    "hidden": "128,128,64,64",
}


def _csv(text):
    return [t.strip() for t in str(text).split(",") if t.strip()]


def add_arguments(p: argparse.ArgumentParser, grid: bool) -> None:
    """The flags shared by ``compare`` (``grid=True``: comma-separated lists) and ``train``
    (one value each)."""
    many = "comma-separated list" if grid else "one value"
    p.add_argument("--dataset", default="digits",
                   help="digits (default), spirals, classification, or "
                        "idx:<images.idx[.gz]>,<labels.idx[.gz]> (MNIST IDX files)")
    p.add_argument("--optimizers", "--optimizer", dest="optimizers",
                   default=DEFAULTS["optimizers"] if grid else "adam",
                   help=f"{many} of: {', '.join(C.OPTIMIZERS)} (momentum: SGD with momentum "
                        f"0.9; default %(default)s)")
    p.add_argument("--init", default=DEFAULTS["init"] if grid else "he",
                   help=f"{many} of: {', '.join(C.INITS)} (normal: N(0, 1); small: "
                        "N(0, 0.01^2)), or any gf.nn.init name (default %(default)s)")
    p.add_argument("--norm", default=DEFAULTS["norm"] if grid else "batch",
                   help=f"{many} of: {', '.join(C.NORMS)} (default %(default)s)")
    p.add_argument("--activation", default=DEFAULTS["activation"] if grid else "relu",
                   help=f"{many} of: {', '.join(C.ACTIVATIONS)} (default %(default)s)")
    p.add_argument("--lr-schedule", "--schedule", dest="lr_schedule",
                   default=DEFAULTS["lr_schedule"] if grid else "cosine",
                   help=f"{many} of: {', '.join(C.SCHEDULES)} (default %(default)s)")
    p.add_argument("--lr", default=None,
                   help=("learning rate(s), comma-separated: one more grid axis; "
                         if grid else "learning rate; ") + "default per optimizer: "
                   + ", ".join(f"{k} {v[2]:g}" for k, v in C.OPTIMIZERS.items()))
    p.add_argument("--epochs", type=int, default=DEFAULTS["epochs"] if grid else 20,
                   help="epochs per run (default %(default)s)")
    if grid:
        p.add_argument("--seeds", type=int, default=DEFAULTS["seeds"],
                       help="runs per configuration, seeds --seed, --seed+1, ... "
                            "(default %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="first seed (default %(default)s)")
    p.add_argument("--batch-size", type=int, default=64, help="default %(default)s")
    p.add_argument("--hidden", default=DEFAULTS["hidden"],
                   help="hidden layer widths, e.g. 128,64 or 256-128-64 (default %(default)s)")
    p.add_argument("--threshold", type=float, default=0.9,
                   help="validation accuracy whose first epoch is reported (default "
                        "%(default)s)")
    p.add_argument("--grad-clip", type=float, default=None,
                   help="clip the global gradient norm to this (default: no clipping, so "
                        "exploding gradients show)")
    p.add_argument("--train-size", type=int, default=None,
                   help="use at most this many training samples (default: all)")
    p.add_argument("--val-fraction", type=float, default=0.2,
                   help="held-out fraction for validation (default %(default)s)")
    p.add_argument("--monitor-every", type=int, default=1,
                   help="record per-layer gradient norms every N steps (default %(default)s)")
    p.add_argument("--device", default="cpu",
                   help="cpu or cuda (a GRADFUSE_CUDA=ON build with a GPU; default %(default)s)")


def build_parsers(sub) -> None:
    """Add the ``compare`` and ``train`` sub-commands to an argparse ``sub``-parsers object."""
    cmp_ = sub.add_parser(
        "compare", help="train a grid of optimizers x inits x norms x activations x lr "
                        "schedules over seeds; ranked table, CSV/JSON, plots",
        description="Train every combination of the given techniques from several seeds, print "
                    "a ranked table and write results.csv, runs.csv, runs.json, results.json and "
                    "PNG plots (loss_curves, accuracy, grad_norms) into --out.")
    add_arguments(cmp_, grid=True)
    cmp_.add_argument("--out", default="results", help="output folder (default %(default)s/)")
    cmp_.add_argument("--top", type=int, default=None,
                      help="print only the best N rows (and the worst three) of the table")
    cmp_.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    cmp_.add_argument("--jobs", type=int, default=None,
                      help="runs trained at once in worker processes (default: the number "
                           "of cores, at most 8; 1 trains in this process). The results do not "
                           "depend on it")
    cmp_.add_argument("-q", "--quiet", action="store_true", help="no per-run progress lines")
    trn = sub.add_parser(
        "train", help="train one configuration (the flags of compare, one value each)",
        description="Train one configuration with a progress bar; print the per-epoch table "
                    "and the final metrics. Exit status 1 when the run diverged.")
    add_arguments(trn, grid=False)
    trn.add_argument("--save", default=None, metavar="PATH",
                     help="write the trained model's state_dict here (gf.save)")
    trn.add_argument("--distributed", action="store_true",
                     help="data-parallel over the MPI ranks of `mpiexec -n W gradfuse train "
                          "--distributed ...` (pip install 'gradfuse[distributed]'): "
                          "--batch-size is per rank; only rank 0 prints and saves")
    trn.add_argument("--sync-bn", action="store_true",
                     help="with --distributed and --norm batch: batch statistics over all "
                          "ranks (gf.nn.SyncBatchNorm) instead of per rank")


def _positive(parser, flag, v, minimum=1):
    if v is not None and v < minimum:
        parser.error(f"{flag}: expected an integer >= {minimum}, got {v}")


def _hidden(parser, text):
    if re.search(r"(^|[,-])\s*-", str(text).strip()):  # a minus sign, not a separator
        parser.error(f"--hidden: widths must be >= 1, got {text!r}")
    parts = [t for t in str(text).replace("-", ",").split(",") if t.strip()]
    try:
        widths = [int(t) for t in parts]
    except ValueError:
        parser.error(f"--hidden: expected widths like 128,64, got {text!r}")
    if any(w < 1 for w in widths):
        parser.error(f"--hidden: widths must be >= 1, got {text!r}")
    return tuple(widths)


def parse_grid(parser, args, grid: bool) -> dict:
    """Check every flag; returns ``{"configs", "seeds", "hidden", "lrs"}`` or exits (code 2)
    through ``parser.error`` naming the bad flag."""
    try:
        opts = C.check_choices("--optimizers", _csv(args.optimizers), list(C.OPTIMIZERS))
        inits = C.check_choices("--init", _csv(args.init), _init_names())
        norms = C.check_choices("--norm", _csv(args.norm), list(C.NORMS))
        acts = C.check_choices("--activation", _csv(args.activation), list(C.ACTIVATIONS))
        scheds = C.check_choices("--lr-schedule", _csv(args.lr_schedule), list(C.SCHEDULES))
    except ValueError as e:
        parser.error(str(e))
    for name in inits:
        _check_init(parser, name)
    lrs = None
    if args.lr is not None:
        try:
            lrs = [float(t) for t in _csv(args.lr)]
        except ValueError:
            parser.error(f"--lr: expected a number{'s' if grid else ''}, got {args.lr!r}")
        if not lrs or not all(lr > 0 and lr < float("inf") for lr in lrs):
            parser.error(f"--lr: expected positive finite learning rates, got {args.lr!r}")
        # a configuration's key (which groups its runs) shows the lr as {:g}: two lrs that
        # print the same would be merged into one row
        shown = [f"{lr:g}" for lr in lrs]
        dup = sorted({t for t in shown if shown.count(t) > 1})
        if dup:
            parser.error(f"--lr: {', '.join(dup)} given twice (learning rates must differ in "
                         "their first 6 significant digits)")
    if not grid:
        for flag, values in (("--optimizer", opts), ("--init", inits), ("--norm", norms),
                             ("--activation", acts), ("--lr-schedule", scheds),
                             ("--lr", lrs or [None])):
            if len(values) != 1:
                parser.error(f"{flag}: train takes one value, got {len(values)} (use compare)")
    _positive(parser, "--epochs", args.epochs)
    _positive(parser, "--batch-size", args.batch_size)
    if "batch" in norms and args.batch_size < 2:
        parser.error(f"--batch-size: batch norm needs at least 2 samples per batch, got "
                     f"{args.batch_size}")
    _positive(parser, "--monitor-every", args.monitor_every)
    _positive(parser, "--train-size", args.train_size, minimum=2)
    if grid:
        _positive(parser, "--seeds", args.seeds)
        _positive(parser, "--jobs", args.jobs)
        _positive(parser, "--top", args.top)
        if os.path.exists(args.out) and not os.path.isdir(args.out):
            parser.error(f"--out: {args.out!r} exists and is not a folder")
        if args.jobs is None:
            args.jobs = max(1, min(os.cpu_count() or 1, 8))
    if args.seed < 0:
        parser.error(f"--seed: expected an integer >= 0, got {args.seed}")
    last_seed = args.seed + (args.seeds if grid else 1) - 1
    if last_seed >= 2**64:  # gf.Generator and the DataLoader take 64-bit seeds
        parser.error(f"--seed: the seeds must stay below 2**64, the last one would be "
                     f"{last_seed}")
    if not 0 <= args.threshold <= 1:
        parser.error(f"--threshold: expected an accuracy in [0, 1], got {args.threshold}")
    if not 0 < args.val_fraction < 1:
        parser.error(f"--val-fraction: expected a number in (0, 1), got {args.val_fraction}")
    if args.grad_clip is not None and not args.grad_clip > 0:
        parser.error(f"--grad-clip: expected a positive norm, got {args.grad_clip}")
    hidden = _hidden(parser, args.hidden)
    _check_device(parser, args.device)
    configs = C.expand_grid(opts, inits, norms, acts, scheds, lrs)
    n_seeds = args.seeds if grid else 1
    return {"configs": configs, "seeds": list(range(args.seed, args.seed + n_seeds)),
            "hidden": hidden}


def _check_device(parser, device):
    from ..tensor import check_device

    try:
        check_device(device)
    except (TypeError, ValueError) as e:  # the reason (no GPU, CPU-only build) is in e
        msg = str(e)
        parser.error("--device: " + (msg[len("device: "):] if msg.startswith("device: ")
                                     else msg))


def _check_writable(parser, flag, folder):
    """Exit (code 2) unless a file can be created in ``folder``: checked before the training
    (os.access is no help: it says yes to root, and root cannot write into /proc either)."""
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-gradfuse-")
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        parser.error(f"{flag}: cannot write into {folder!r}: {e.strerror or e}")


def _check_init(parser, name):
    """Exit (code 2) when the init scheme ``name`` cannot initialize a layer on its own (e.g.
    ``constant``, which needs a value): tried on a 2x3 Linear now, not in every run."""
    import gradfuse as gf

    scheme, kwargs = C.init_spec(name)
    try:
        gf.nn.Linear(3, 2, init=gf.nn.init.get(scheme, **kwargs)).reset_parameters(
            generator=gf.Generator(0))
    except (TypeError, ValueError) as e:
        parser.error(f"--init: {name!r} cannot initialize a layer by itself ({e})")


def _init_names():
    import gradfuse as gf

    return list(C.INITS) + [n for n in gf.nn.init.names() if n not in C.INITS]


def _load(parser, args, dist=None):
    """The data set of ``--dataset``, or exit (code 2) naming the flag. Under
    ``--distributed`` every rank loads it and the verdict is shared: a file missing on one
    machine only exits every rank (with that rank's message), instead of that rank alone
    while the others wait for it in the trainer's first collective."""
    from .datasets import load_dataset

    data = msg = None
    try:
        data = load_dataset(args.dataset, val_fraction=args.val_fraction,
                            train_size=args.train_size)
    except (ValueError, OSError, ImportError) as e:
        # ImportError: digits needs scikit-learn (the examples extra), which
        # `pip install gradfuse[distributed]` alone does not bring
        msg = str(e)
        if msg.startswith("val_fraction:"):
            msg = "--val-fraction" + msg[len("val_fraction"):]
        elif not msg.startswith("--dataset"):
            msg = f"--dataset: {msg}"
    if dist is not None:
        failed = [(r, m) for r, m in enumerate(dist.all_gather_object(msg)) if m is not None]
        if failed:
            msg = f"{failed[0][1]} (on rank {failed[0][0]})"
    if msg is not None:
        parser.error(msg)
    return data


def _run_kwargs(args, spec):
    return dict(epochs=args.epochs, batch_size=args.batch_size, hidden=spec["hidden"],
                threshold=args.threshold, grad_clip=args.grad_clip,
                monitor_every=args.monitor_every, device=args.device)


def _describe_model(data, hidden):
    return "MLP " + "-".join(str(w) for w in (data.n_features, *hidden, data.n_classes))


def compare(parser, args, log=print) -> int:
    """The ``gradfuse compare`` command."""
    from . import plots, report
    from .runner import run_grid

    spec = parse_grid(parser, args, grid=True)
    data = _load(parser, args)
    try:
        os.makedirs(args.out, exist_ok=True)  # now, not after an hour of training
    except OSError as e:
        parser.error(f"--out: cannot create {args.out!r}: {e}")
    _check_writable(parser, "--out", args.out)
    configs, seeds = spec["configs"], spec["seeds"]
    total = len(configs) * len(seeds)
    log(data.describe())
    log(f"{_describe_model(data, spec['hidden'])}, batch {args.batch_size}, {args.epochs} epochs"
        f"{'' if args.grad_clip is None else f', grad clip {args.grad_clip:g}'}; "
        f"{len(configs)} configurations x {len(seeds)} seeds = {total} runs on "
        f"{min(args.jobs, total)} process{'es' if min(args.jobs, total) > 1 else ''}"
        f"{'' if args.quiet else ' (the ETA follows each run)'}")
    t0 = time.perf_counter()
    results = run_grid(configs, data, seeds=seeds, jobs=args.jobs,
                       log=(lambda s: None) if args.quiet else log, **_run_kwargs(args, spec))
    elapsed = time.perf_counter() - t0
    rows = report.rank(report.aggregate(results))
    axes = report.varying_axes(rows) or ["optimizer"]
    if "lr" not in axes:
        axes.append("lr")  # the lr each optimizer used, even when it is not an axis
    log("")
    log(f"Ranked by final validation accuracy "
        f"{f'(mean +- std over {len(seeds)} seeds)' if len(seeds) > 1 else '(mean over 1 seed)'}"
        f"; diverged configurations last:")
    log(report.format_table(rows, threshold=args.threshold, top=args.top, axes=axes))
    effects = report.format_effects(rows, args.threshold)
    if effects:
        log("")
        log(effects)
    n_div = sum(r["diverged"] for r in results)
    log("")
    log(f"{total} runs in {elapsed:.1f} s ({n_div} diverged)")
    out = args.out
    meta = {"dataset": data.describe(), "model": _describe_model(data, spec["hidden"]),
            "epochs": args.epochs, "seeds": seeds, "batch_size": args.batch_size,
            "threshold": args.threshold, "grad_clip": args.grad_clip, "seconds": elapsed}
    report.write_results_csv(rows, os.path.join(out, "results.csv"))
    report.write_json({"meta": meta, "results": rows}, os.path.join(out, "results.json"))
    report.write_runs_csv(results, os.path.join(out, "runs.csv"))
    report.write_json({"meta": meta, "runs": results}, os.path.join(out, "runs.json"))
    written = ["results.csv", "results.json", "runs.csv", "runs.json"]
    log(f"wrote {', '.join(os.path.join(out, w) for w in written)}")
    paths = []
    if args.no_plots:
        log("plots skipped (--no-plots)")
    else:
        ok, why = plots.available()
        if ok:
            paths = plots.write_all(rows, results, out, threshold=args.threshold)
            log(f"plots: {', '.join(paths)}")
        else:
            log(f"plots skipped: {why}")
    # a figure of an earlier study in the same --out would sit beside results it does not show
    stale = [p for p in (os.path.join(out, n) for n in plots.FILES)
             if p not in paths and os.path.isfile(p)]
    for p in stale:
        os.remove(p)
    if stale:
        log(f"removed the plots of an earlier run: {', '.join(stale)}")
    return 0


def _init_distributed(parser, args):
    """``gf.distributed`` initialized for ``--distributed`` (exit 2 when MPI is missing), or
    None."""
    if not args.distributed:
        if args.sync_bn:
            parser.error("--sync-bn: needs --distributed")
        import gradfuse as gf

        if gf.distributed.launched():  # reads the environment only: MPI is not initialized
            print("gradfuse train: started by an MPI launcher with several processes but "
                  "without --distributed: every process trains the whole run on its own (add "
                  "--distributed for data-parallel training)", file=sys.stderr, flush=True)
        return None
    import gradfuse as gf

    if not gf.distributed.is_available():
        parser.error("--distributed: mpi4py is not installed (pip install "
                     "'gradfuse[distributed]')")
    if args.device != "cpu":
        parser.error(f"--distributed: runs on the CPU (got --device {args.device})")
    gf.distributed.init()
    if gf.distributed.get_world_size() == 1:
        print("gradfuse train: --distributed in a world of one process (not started by an MPI "
              "launcher?): training alone; run `mpiexec -n W gradfuse train --distributed ...` "
              "for W ranks", file=sys.stderr, flush=True)
    return gf.distributed


def _check_save(parser, args, dist):
    """Refuse an unusable --save before training; under --distributed rank 0 (the one that
    writes) checks and every rank exits with its message."""
    msg = None
    if args.save is not None and (dist is None or dist.is_main()):
        folder = os.path.dirname(os.path.abspath(args.save))
        if not os.path.isdir(folder):
            msg = f"--save: folder of {args.save!r} does not exist"
        elif os.path.isdir(args.save):
            msg = f"--save: {args.save!r} is a folder; give a file name"
        else:
            try:
                _check_writable(parser, "--save", folder)
            except SystemExit:
                if dist is None:
                    raise
                msg = f"--save: cannot write into {folder!r}"
    if dist is not None:
        msg = dist.broadcast_object(msg)
    if msg is not None:
        parser.error(msg)


def train(parser, args, log=print) -> int:
    """The ``gradfuse train`` command (``--distributed``: on every rank of an MPI job; rank 0
    prints and saves)."""
    from .runner import run_one

    spec = parse_grid(parser, args, grid=False)  # the same verdict on every rank
    if args.sync_bn and spec["configs"][0].norm != "batch":  # else it would change nothing
        parser.error(f"--sync-bn: needs --norm batch, got --norm {spec['configs'][0].norm}")
    dist = _init_distributed(parser, args)
    if dist is not None and not dist.is_main():
        def log(*a, **k):
            return None
    _check_save(parser, args, dist)
    data = _load(parser, args, dist)
    cfg = spec["configs"][0]
    log(data.describe())
    if dist is None:
        batch = f"batch {args.batch_size}"
    else:
        w = dist.get_world_size()
        batch = (f"batch {args.batch_size} per rank x {w} ranks = {args.batch_size * w}"
                 f"{', SyncBatchNorm' if args.sync_bn else ''}")
    log(f"{_describe_model(data, spec['hidden'])}: {cfg.key}, {batch}, "
        f"{args.epochs} epochs, seed {args.seed}")
    models = []
    r = run_one(cfg, data, seed=args.seed, verbose=1, model_out=models,
                distributed=dist is not None, sync_bn=args.sync_bn, **_run_kwargs(args, spec))
    log("")
    log(" epoch  train loss  train acc  val loss  val acc        lr     time")
    for h in r["history"]:
        log(f"{h['epoch']:6d}  {_f(h['train_loss'], '10.4f')}  {_f(h['train_acc'], '9.3f')}  "
            f"{_f(h['val_loss'], '8.4f')}  {_f(h['val_acc'], '7.3f')}  {_f(h['lr'], '8.2e')}  "
            f"{_f(h['time'], '5.2f')} s")
    reached = r["epochs_to_threshold"]
    log("")
    log(f"final: val acc {_f(r['final_val_acc'], '.4f')}, val loss "
        f"{_f(r['final_val_loss'], '.4f')}, train loss {_f(r['final_train_loss'], '.4f')}; "
        f"val acc >= {args.threshold:g} "
        f"{'at epoch ' + str(reached) if reached else 'not reached'}; "
        f"{'DIVERGED at epoch ' + str(r['stopped_epoch']) if r['diverged'] else 'finite'}; "
        f"{r['wall_time']:.2f} s")
    flags = r["grad_flags"]
    if flags["vanishing"] or flags["exploding"]:
        log(f"gradient monitor: {flags['vanishing']} vanishing and {flags['exploding']} "
            "exploding layer-steps flagged")
    if args.save is not None and (dist is None or dist.is_main()):
        import gradfuse as gf

        gf.save(models[0].state_dict(), args.save)
        log(f"saved the model's state_dict to {args.save}")
    return 1 if r["diverged"] else 0


def _f(x, spec):
    """``x`` in ``spec`` (e.g. ``"10.4f"``), its width kept: a fixed-point number too large
    for it (a diverging loss of 1e35) is written in exponent form, NaN/None as ``nan``."""
    width = int(spec.split(".")[0] or 0)
    if x is None:
        return "nan".rjust(width)
    text = format(x, spec)
    if width and len(text) > width:
        text = format(x, f"{width}.{max(1, width - 7)}e")
    return text
