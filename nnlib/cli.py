"""Command line: ``nnlib run [CONF] [--set key=value ...] [--out DIR] [--overwrite] [--resume DIR]``.

The one entry path: ``nnlib run``, ``python -m nnlib run``, ``spark-submit
jobs/model_avg.py`` and every rank of ``mpiexec ... jobs/mpi_model_avg.py``
come here. This module parses arguments, hands the run to
:func:`nnlib.api.train` (the Python API runs the same path), prints, and
turns every input error into exit status 2 with one line on stderr (nothing
is left half-written). With an SPMD engine (MPI) every rank runs this path
and only the main process (rank 0) writes and prints, as nanoGPT gates on
``master_process``.

Exit statuses: 0 done; 2 bad input (one line); 130 Ctrl-C (one line: the
round reached, what is kept, the resume command); 143 stopped by SIGTERM
after a round, its checkpoint written (one line: the same); other
statuses: an engine that failed.
"""

from __future__ import annotations

import argparse
import glob
import shlex
import sys
import time
from pathlib import Path

import nnlib
from nnlib.api import Stopped, launch_ranks, resume_config, train
from nnlib.config import load_config
from nnlib.data.tables import check_before_launch
from nnlib.driver import with_absolute_paths
from nnlib.engines.mpi.launcher import LAUNCHED_FLAG, inside_launcher, launcher_rank
from nnlib.errors import ConfigError, NnlibError
from nnlib.outputs import default_run_dir, write_cause


def build_parser(prog: str = "nnlib") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description="Distributed batch training of MLPs.")
    parser.add_argument(
        "--version",
        action="version",
        version=f"%(prog)s {nnlib.__version__} (Python {sys.version.split()[0]}, {Path(nnlib.__file__).parent})",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run_parser = sub.add_parser("run", help="train as a conf file says")
    run_parser.add_argument("conf", nargs="?", help="conf file (default: the built-in defaults)")
    run_parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set mappers=8 (repeatable)",
    )
    run_parser.add_argument("--out", help="run directory (default: runs/<timestamp>)")
    run_parser.add_argument("--overwrite", action="store_true", help="replace a finished run in --out")
    run_parser.add_argument(
        "--resume",
        metavar="DIR",
        help="continue the run in DIR from its last checkpoint (only train.rounds and the "
        "engine may change), or start it there if DIR holds no run yet",
    )
    run_parser.add_argument("--quiet", action="store_true", help="no per-round progress lines")
    # a rank started by nnlib's own launcher: it stays silent on a stop (the launcher says it) and exits 0
    run_parser.add_argument(LAUNCHED_FLAG, dest="launched", action="store_true", help=argparse.SUPPRESS)
    sweep = sub.add_parser("sweep", help="run every case of a sweep file, each as its own run, and draw the figures")
    sweep.add_argument("sweep", help="sweep file (YAML: base, set, grid, cases, repeats, target_accuracy)")
    sweep.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key in every run (repeatable)",
    )
    sweep.add_argument("--out", help="sweep directory (default: runs/sweep-<name>)")
    sweep.add_argument("--quiet", action="store_true", help="no progress bar")
    search = sub.add_parser(
        "split-search",
        help="train and score every split of the hidden units into groups (combinations.csv, search.json and figures)",
    )
    search.add_argument("conf", nargs="?", help="conf file (default: the built-in defaults)")
    search.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set model.hidden=[8] (repeatable)",
    )
    search.add_argument("--out", help="output directory (default: runs/split-search-<timestamp>)")
    search.add_argument("--quiet", action="store_true", help="no progress bar")
    plot = sub.add_parser("plot", help="draw the figures of a run or sweep directory into DIR/plots/")
    plot.add_argument("dir", help="a run directory (summary.json) or a sweep directory (results.csv)")
    report = sub.add_parser(
        "report",
        help="write DIR/report.md and a self-contained DIR/report.html; with several runs, one report comparing them",
    )
    report.add_argument(
        "dirs",
        nargs="+",
        metavar="DIR",
        help="a run (summary.json), a sweep (results.csv) or a split search (search.json); "
        "or several runs (folders or a glob such as 'runs/m*') to compare, as a sweep's report",
    )
    report.add_argument(
        "--out", help="with several runs: the folder for the comparison (default: runs/compare-<timestamp>)"
    )
    predict = sub.add_parser("predict", help="predict every row of a data source (see nnlib/model/predict.py)")
    predict.add_argument("model", help="a run directory or a model file (model.npz)")
    predict.add_argument(
        "data", help="a data source: digits, synthetic, .npz, .csv, IDX, .parquet or a Parquet dataset"
    )
    predict.add_argument(
        "--out",
        help="write the predictions here (.parquet or .csv; engine=spark writes a "
        "directory of part files); default: only report",
    )
    predict.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="how to read DATA, e.g. --set data.key_column=id; --set engine=spark scores in "
        "Spark's executors (repeatable)",
    )
    predict.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    export = sub.add_parser("export", help="export a model to ONNX or torch (see nnlib/model/export.py)")
    export.add_argument("model", help="a run directory or a model file (model.npz)")
    export.add_argument("--format", required=True, help="onnx or torch")
    export.add_argument("--out", required=True, help="the file to write")
    export.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    return parser


def resolve_config(args: argparse.Namespace):
    """The run's config: CONF (or the built-in defaults) plus --set; with --resume, the saved one.

    ``--resume DIR`` starts from ``DIR/config.yaml``; a CONF or --set given
    alongside may change ``train.rounds`` and the engine, nothing else
    (:func:`nnlib.api.resume_config`). A DIR that holds no run yet is
    started afresh from CONF and --set, so the same command serves the first
    start and every restart (a batch job's requeue).
    """
    if not args.resume:
        return load_config(args.conf, args.overrides)
    if args.out and Path(args.out).resolve() != Path(args.resume).resolve():
        raise ConfigError(f"--resume {args.resume} writes to that directory; --out {args.out} names another")
    return resume_config(args.resume, args.conf, args.overrides, overrides_source="--set")


def run_arguments(args: argparse.Namespace) -> list[str]:
    """``args`` as ``nnlib run`` arguments again (what every launched rank receives)."""
    argv = [args.conf] if args.conf else []
    for item in args.overrides:
        argv += ["--set", item]
    if args.resume:
        argv += ["--resume", str(args.resume)]
    elif args.out:
        argv += ["--out", str(args.out)]
    return argv + ["--overwrite"] * args.overwrite + ["--quiet"] * args.quiet


def run_command(args: argparse.Namespace) -> int:
    """Resolve the config, then :func:`nnlib.api.train` (under mpiexec, on every rank); print the outcome.

    ``engine=mpi`` outside mpiexec starts the ranks on these same arguments.
    """
    config = resolve_config(args)
    if config.engine == "mpi" and not inside_launcher():
        check_before_launch(config.data)  # else each rank finds the same error, after mpiexec's start
        args.out = args.resume or args.out or str(default_run_dir())  # chosen here, so a stopped run can be named
        return launch_ranks(config, Path(args.out), run_arguments(args))
    log = print_flushed if launcher_rank() == 0 and not args.quiet else None
    run = train(config, out=args.resume or args.out, resume=bool(args.resume), overwrite=args.overwrite, log=log)
    if run.path is not None:  # the main process: it wrote the run directory
        s = run.summary
        baseline = f" (unsplit baseline {s['baseline_test_accuracy']:.4f})" if "baseline_test_accuracy" in s else ""
        if "final_test_r2" in s:
            print_flushed(
                f"final test R² {s['final_test_r2']:.4f}, RMSE {s['final_test_rmse']:.4g}, MAE "
                f"{s['final_test_mae']:.4g}, test loss {s['final_test_loss']:.4f}, "
                f"{s['wall_seconds']:.1f}s; outputs in {run.path}"
            )
            return 0
        print_flushed(
            f"final test accuracy {s['final_test_accuracy']:.4f}{baseline}, test loss "
            f"{s['final_test_loss']:.4f}, {s['wall_seconds']:.1f}s; outputs in {run.path}"
        )
    return 0


def print_flushed(message: str) -> None:
    print(message, flush=True)


def sweep_command(args: argparse.Namespace) -> int:
    """Run a sweep; print how many runs finished, failed and were skipped, and where results.csv is."""
    from nnlib.experiments.sweep import run_sweep

    done = run_sweep(args.sweep, args.out, args.overrides, args.quiet)
    failed = sum(row["status"] == "failed" for row in done.rows)
    print_flushed(
        f"sweep: {len(done.rows)} runs ({done.skipped} already finished, {failed} failed); results in {done.results}"
    )
    return 0


def _results_dir(text: str) -> Path:
    """A run or sweep directory given on the command line, refused in one line if it is neither."""
    path = Path(text)
    if not path.exists():
        raise NnlibError(f"{text} does not exist")
    if not any((path / name).exists() for name in ("results.csv", "summary.json", "search.json")):
        raise NnlibError(
            f"{text}: not a finished run (no summary.json), a sweep (no results.csv) "
            "nor a split search (no search.json)"
        )
    return path


def plot_command(args: argparse.Namespace) -> int:
    from nnlib.experiments.plots import plot_run, plot_sweep

    path = _results_dir(args.dir)
    if (path / "search.json").exists():
        raise NnlibError(
            f"plot: {path} is a split search; its figures are drawn by nnlib split-search, in {path / 'plots'}"
        )
    drawn = plot_sweep(path) if (path / "results.csv").exists() else plot_run(path)
    print_flushed(f"plot: {len(drawn)} figures in {path / 'plots'}: {', '.join(p.name for p in drawn)}")
    return 0


def report_command(args: argparse.Namespace) -> int:
    from nnlib.experiments.report import write_report

    dirs = [found for text in args.dirs for found in (sorted(glob.glob(text)) if glob.has_magic(text) else [text])]
    if not dirs:
        raise NnlibError(f"report: {' '.join(args.dirs)} matches no folder")
    if len(dirs) == 1:
        if args.out:
            raise ConfigError(
                "report: --out is for comparing several runs; the report of one run, sweep or "
                f"search goes into its own folder ({dirs[0]})"
            )
        md, page = write_report(_results_dir(dirs[0]))
        print_flushed(f"report: {md} and {page}")
        return 0
    from nnlib.experiments.report import compare_runs

    out = compare_runs(dirs, args.out or Path("runs") / time.strftime("compare-%Y%m%d-%H%M%S"))
    md, page = write_report(out)
    print_flushed(f"report: {len(dirs)} runs compared in {md} and {page}")
    return 0


def split_search_command(args: argparse.Namespace) -> int:
    """Run the search over splits; print the baseline, the spread and where the outputs are."""
    from nnlib.experiments.search import split_search

    config = with_absolute_paths(load_config(args.conf, args.overrides))
    out = Path(args.out) if args.out else Path("runs") / time.strftime("split-search-%Y%m%d-%H%M%S")
    rerun = ["nnlib", "split-search", *([str(Path(args.conf).resolve())] if args.conf else [])]
    for item in args.overrides:
        rerun += ["--set", item]
    done = split_search(
        config, out, args.quiet, log=print_flushed, command=shlex.join([*rerun, "--out", str(out.resolve())])
    )
    f = done.facts
    print_flushed(
        f"unsplit baseline {f['baseline_test_accuracy']:.4f}; {f['evaluated']} splits: mean "
        f"{f['mean_test_accuracy']:.4f}, {f['min_test_accuracy']:.4f} to {f['max_test_accuracy']:.4f}, "
        f"{f['beat_baseline']} beat the baseline"
    )
    for name in ("best", "worst"):
        row = f[name]
        print_flushed(
            f"{name}: #{row['id']} [{row['groups']}] accuracy {row['test_accuracy']:.4f}, "
            f"cross-group coupling {row['cross_coupling']:.3f}, weight balance {row['weight_balance']:.2f}"
        )
    correlations = (("coupling", "coupling_accuracy_correlation"), ("weight balance", "balance_accuracy_correlation"))
    for name, key in correlations:
        if f.get(key) is not None:
            print_flushed(f"correlation of accuracy with {name} over the splits: {f[key]:+.2f}")
    print_flushed(f"outputs in {out}: combinations.csv, search.json, plots/")
    return 0


def predict_command(args: argparse.Namespace) -> int:
    """Predict DATA with a model; print the rows, accuracy and loss (with labels; a regressor's RMSE, MAE, R² and
    loss with its targets), weighted by ``--set data.weight_column=NAME``, and where the file is."""
    from nnlib.model.model import Model
    from nnlib.model.predict import predict_engine, predict_source

    if predict_engine(args.overrides) == "spark":  # scored in Spark's executors, written by Spark
        from nnlib.engines.spark.predict import predict_spark

        done = predict_spark(args.model, args.data, args.overrides, args.out, args.overwrite)
    else:
        done = predict_source(Model.load(args.model), args.data, args.overrides, args.out, args.overwrite)
    scores = "" if done.accuracy is None else f"; accuracy {done.accuracy:.4f}, loss {done.loss:.4f}"
    if done.rmse is not None:
        scores = f"; RMSE {done.rmse:.6g}, MAE {done.mae:.6g}, R² {done.r2:.4f}, loss {done.loss:.4f}"
    where = f"predictions in {done.out}" if done.out else "no --out: nothing written"
    print_flushed(f"predict: {done.rows} rows{scores}; {where}")
    return 0


def export_command(args: argparse.Namespace) -> int:
    """Export a model to ONNX or torch; print where."""
    from nnlib.model.export import export
    from nnlib.model.model import Model

    if Path(args.out).exists() and not args.overwrite:
        raise ConfigError(f"--out: {args.out} exists; choose another file or pass --overwrite")
    print_flushed(f"export: {export(Model.load(args.model), args.format, args.out)} ({args.format})")
    return 0


COMMANDS = {
    "run": run_command,
    "sweep": sweep_command,
    "plot": plot_command,
    "report": report_command,
    "split-search": split_search_command,
    "predict": predict_command,
    "export": export_command,
}


SPEAKER_GRACE_SECONDS = 2.0  # how long a rank other than 0 waits before exiting on an error


def main(argv: list[str] | None = None, prog: str = "nnlib") -> int:
    args = build_parser(prog).parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except NnlibError as exc:
        # under mpiexec every rank meets the same input error; rank 0 says it once
        if launcher_rank() == 0:
            print(f"{prog}: error: {exc}", file=sys.stderr, flush=True)
        elif inside_launcher():
            # the launcher ends every rank as soon as one exits non-zero: let rank 0 say it first
            time.sleep(SPEAKER_GRACE_SECONDS)
        return 2
    except OSError as exc:
        if isinstance(exc, BrokenPipeError):
            raise  # entry_point ends quietly
        # a file nnlib's writers do not wrap (they raise NnlibError naming the file): one line, not a traceback
        if launcher_rank() == 0:
            print(f"{prog}: error: {exc.filename or 'a file'}: {write_cause(exc)}", file=sys.stderr, flush=True)
        return 2
    except Stopped as exc:
        # SIGTERM: one line, as for Ctrl-C. Under a plain mpiexec rank 0 says it and every rank exits 143; the
        # ranks of nnlib's launcher exit 0, so mpiexec adds nothing, and the launcher says it
        if getattr(args, "launched", False):
            return 0
        if launcher_rank() == 0:
            print(f"{prog}: {exc}", file=sys.stderr, flush=True)
        else:
            time.sleep(SPEAKER_GRACE_SECONDS)  # mpiexec ends every rank once one exits non-zero: rank 0 first
        return exc.status
    except KeyboardInterrupt as exc:
        # Ctrl-C: one line (the round reached, what is kept, how to resume) instead of a traceback;
        # ranks under mpiexec stay silent, the process that launched them says it
        if not inside_launcher():
            print(f"{prog}: {exc or 'interrupted'}", file=sys.stderr, flush=True)
        return 130


def entry_point(argv: list[str] | None = None) -> None:
    """Run :func:`main` on ``argv`` (default the command line) and exit with its status."""
    try:
        sys.exit(main(argv))
    except BrokenPipeError:  # the reader went away (nnlib run | head): stop quietly, as other tools do
        sys.stderr.close()
        sys.exit(141)
