"""The ``iarm`` command.

::

    iarm train   [flags]                        train (alone, or as one rank under torchrun / TorchX)
    iarm export  RUN --out FILE [--serving [--quantize int8|int4|fp16|none]]
                                                a run's best model as one self-contained file
                                                (--serving: a quantized TorchScript artifact)
    iarm predict --model FILE --input RAW --out SCORES
    iarm serve   ARTIFACT [--host H] [--port P] [--workers N]   HTTP scoring of raw JSON rows
    iarm data    DATASET SOURCE OUT [options]   preprocess a dataset's original files
    iarm data    tabular SCHEMA OUT [--data-dir D]  preprocess any CSV/TSV/Parquet table a schema describes
    iarm experiment --preset P --out DIR [...]  the paper's studies (table2, ablation, layers, split, attention)
    iarm tune    --model M --trials N --out DIR  hyperparameter search on the validation split (Optuna)

Each subcommand is a :class:`Command` in :data:`COMMANDS`; a new one (``experiment``) is
one more entry.

An error ends the command with one line, ``iarm COMMAND: error: MESSAGE`` (the message names the
file), and exit status 1; ``iarm --debug COMMAND`` or ``IARM_DEBUG=1`` shows the traceback too.
A full disk says ``disk full while writing PATH``.
"""

import argparse
import errno
import gc
import os
import sys
import traceback
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Dict, Iterator, List, Optional


@dataclass(frozen=True)
class Command:
    """One subcommand: its help line, its flags and what it runs (returns the exit status)."""

    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


def _train_arguments(parser: argparse.ArgumentParser) -> None:
    from iarm_torchrec.train.settings import add_arguments

    add_arguments(parser)


def _train(args: argparse.Namespace) -> int:
    import os

    from iarm_torchrec.train.settings import TrainSettings
    from iarm_torchrec.train.trainer import setup_logging, summary_text, train

    setup_logging()
    metrics = train(TrainSettings.from_namespace(args))
    if int(os.environ.get("RANK", 0)) == 0:
        print(summary_text(metrics), end="")
    return 0


def _export_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", help="the run folder (iarm train --out)")
    parser.add_argument("--out", required=True, help="the file to write")
    parser.add_argument("--checkpoint", help="a checkpoint folder to export instead of the run's best")
    parser.add_argument(
        "--serving",
        action="store_true",
        help="write the serving artifact: quantized, TorchScripted, encoders inside (RUN may also be an iarm export file)",
    )
    parser.add_argument(
        "--quantize",
        choices=["int8", "int4", "fp16", "none"],
        help="--serving: the embedding rows' format (default int8)",
    )


def _export(args: argparse.Namespace) -> int:
    if args.serving:
        from iarm_torchrec.inference.serving import export_serving

        print(export_serving(args.run, args.out, args.quantize or "int8", args.checkpoint))
        return 0
    if args.quantize:
        raise SystemExit("iarm export: --quantize applies to --serving only")
    from iarm_torchrec.inference.export import export_run

    print(export_run(args.run, args.out, args.checkpoint))
    return 0


def _predict_arguments(parser: argparse.ArgumentParser) -> None:
    from iarm_torchrec.inference import SCORING_BATCH_SIZE

    parser.add_argument("--model", required=True, help="an exported model or serving artifact (iarm export [--serving])")
    parser.add_argument("--input", required=True, help="a raw file in the training dataset's format (tabular: a file or glob of the schema's format)")
    parser.add_argument("--out", required=True, help="where to write one click probability per line")
    parser.add_argument("--unlabelled", action="store_true", help="the input has no label column (e.g. Criteo test.txt)")
    parser.add_argument("--batch-size", type=int, default=SCORING_BATCH_SIZE,
                        help=f"rows scored at once (default {SCORING_BATCH_SIZE}; on CPU larger batches are no faster "
                        "and take more memory)")
    parser.add_argument("--precision", choices=["fp32", "bf16", "auto"], default=None,
                        help="the dense arches' compute type while scoring: fp32, bf16 autocast (CPUs with "
                        "AVX512-BF16/AMX), or auto (bf16 where the CPU computes it natively); default: the model's "
                        "training precision as its export records it (fp32 for exports that do not); the "
                        "embeddings stay float32")
    parser.add_argument("--threads", type=int, default=None,
                        help="batches scored at once, each on one core (default: torch's thread count, i.e. "
                        "OMP_NUM_THREADS or the machine's cores)")


@contextmanager
def frozen_imports() -> Iterator[None]:
    """Import modules with Python's cyclic garbage collector paused, then freeze every object that
    exists (``gc.freeze``), so that the collector's later passes skip them.

    Importing torch, torchrec (which pulls torch._dynamo, tensordict and sympy) and FBGEMM creates
    millions of long-lived objects, and every full pass of the collector walked all of them: five
    passes while importing and one more while encoding took ~0.5 s of a 3.2 s ``iarm predict`` of
    10 rows (docs/performance.md). :func:`main` gives the objects back to the collector when it was
    called in-process."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if enabled:
            gc.enable()


def _predict(args: argparse.Namespace) -> int:
    with frozen_imports():
        from iarm_torchrec.inference.predict import predict

    scores = predict(args.model, args.input, args.out, labelled=not args.unlabelled, batch_size=args.batch_size,
                     precision=args.precision, threads=args.threads)
    print(f"{len(scores)} scores written to {args.out}")
    return 0


def _serve_arguments(parser: argparse.ArgumentParser) -> None:
    from iarm_torchrec.inference.server import add_arguments

    add_arguments(parser)


def _serve(args: argparse.Namespace) -> int:
    from iarm_torchrec.inference.server import serve

    return serve(args)


def _data_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dataset", choices=["criteo", "avazu", "movielens-1m", "tabular"])
    parser.add_argument("source", help="the original file or folder; tabular: the schema file (its files are found from its folder, or --data-dir)")
    parser.add_argument("out", help="the preprocessed folder to write")
    parser.add_argument("--data-dir", help="tabular: where the schema's relative file names start (default: the schema's folder)")
    parser.add_argument("--field-set", help="movielens-1m: paper or ids")
    parser.add_argument("--split", choices=["random", "time"])
    parser.add_argument("--valid-ratio", type=float)
    parser.add_argument("--test-ratio", type=float)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--min-count", type=int)
    parser.add_argument("--hash-buckets", type=int)
    parser.add_argument("--numeric", choices=["log1p", "standard", "minmax", "none", "bucketize"])
    parser.add_argument("--user-fields", help="comma-separated user fields (Eq. 5)")
    parser.add_argument("--skip-bad-rows", action="store_true", default=None)
    parser.add_argument("--workers", type=int)
    parser.add_argument("--overwrite", action="store_true", default=None)
    parser.add_argument("--max-field-bytes", type=int, help="a longer field is a bad row (default 65536)")
    parser.add_argument("--max-line-bytes", type=int, help="a longer line is a bad row (default 1048576)")


def _data(args: argparse.Namespace) -> int:
    from iarm_torchrec.data.preprocess import preprocess

    skip = ("dataset", "source", "out", "command", "handler", "debug", "data_dir")
    given = {k: v for k, v in vars(args).items() if v is not None and k not in skip}
    if args.dataset == "tabular":
        spec = preprocess("tabular", args.data_dir, args.out, schema=args.source, **given)
    else:
        if args.data_dir:
            raise ValueError("--data-dir applies to tabular only (the source is the second argument)")
        spec = preprocess(args.dataset, args.source, args.out, **given)
    print(f"{args.out}: {spec.rows} rows, {len(spec.sparse)} categorical and {len(spec.dense)} numerical fields")
    return 0


def _tune_arguments(parser: argparse.ArgumentParser) -> None:
    from iarm_torchrec.experiments.tune import add_arguments

    add_arguments(parser)


def _tune(args: argparse.Namespace) -> int:
    from iarm_torchrec.experiments.tune import run

    return run(args)


def _experiment_arguments(parser: argparse.ArgumentParser) -> None:
    from iarm_torchrec.experiments.command import add_arguments

    add_arguments(parser)


def _experiment(args: argparse.Namespace) -> int:
    from iarm_torchrec.experiments.command import run

    return run(args)


COMMANDS: Dict[str, Command] = {
    "train": Command("train a CTR model (IARM by default)", _train_arguments, _train),
    "export": Command("export a run's best model to one file", _export_arguments, _export),
    "predict": Command("click probabilities for a raw file", _predict_arguments, _predict),
    "serve": Command("serve click probabilities over HTTP from a serving artifact", _serve_arguments, _serve),
    "data": Command("preprocess a dataset", _data_arguments, _data),
    "experiment": Command("run the paper's studies and report them", _experiment_arguments, _experiment),
    "tune": Command("search a model's hyperparameters on the validation split (Optuna)", _tune_arguments, _tune),
}


def build_parser(only: Optional[str] = None) -> argparse.ArgumentParser:
    """The ``iarm`` parser; with ``only``, just that command gets its arguments, so a command
    does not pay for importing the others' modules (``experiment`` alone takes seconds)."""
    parser = argparse.ArgumentParser(prog="iarm", description="IARM and baseline CTR models on TorchRec.")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error (also IARM_DEBUG=1)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, command in COMMANDS.items():
        sub = commands.add_parser(name, help=command.help, description=command.help)
        if only is None or only == name:
            command.add_arguments(sub)
        sub.set_defaults(handler=command.run)
    return parser


# the commands that train or score, whose steps allocate and free large tensors (allocator.py)
REUSE_FREED_MEMORY = ("train", "predict", "tune", "experiment")


def main(argv: Optional[List[str]] = None) -> int:
    """Run the ``iarm`` command of ``argv`` (default: the process's own arguments); returns its
    exit status."""
    in_process = argv is not None
    argv = sys.argv[1:] if argv is None else argv
    chosen = next((a for a in argv if not a.startswith("-")), "")
    args = build_parser(only=chosen).parse_args(argv)
    debug = args.debug or os.environ.get("IARM_DEBUG", "") not in ("", "0")
    frozen_before = gc.get_freeze_count()
    try:
        if args.command in REUSE_FREED_MEMORY:
            with frozen_imports():  # the allocator's module imports torch
                from iarm_torchrec.allocator import reuse_freed_memory

            reuse_freed_memory()
        return args.handler(args)
    except Exception as error:  # KeyboardInterrupt and SystemExit pass
        if debug:
            traceback.print_exc()
        print(f"iarm {args.command}: error: {error_line(error)}", file=sys.stderr, flush=True)
        return 1
    finally:
        if in_process and not frozen_before:
            # a caller in the same process (tests, a notebook) gets its objects back under the
            # collector, so that what becomes garbage later is freed; a program run keeps them
            # frozen to its end (the exit's own collection then skips them too)
            gc.unfreeze()


def error_line(error: BaseException) -> str:
    """One line saying what went wrong (the message names the file where the error knows it)."""
    if isinstance(error, OSError) and error.errno == errno.ENOSPC:
        where = error.filename or "a file"
        return f"disk full while writing {where}"
    if isinstance(error, OSError) and error.filename and str(error.filename) not in str(error.strerror or ""):
        return f"{error.filename}: {error.strerror or error}"
    text = str(error).strip() or type(error).__name__
    lines = [line for line in text.splitlines() if line.strip()]
    return " ".join(line.strip() for line in lines[:3])


if __name__ == "__main__":
    sys.exit(main())
