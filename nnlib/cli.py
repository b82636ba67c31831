"""Command line: ``nnlib run [CONF] [--set key=value ...] [--out DIR] [--overwrite]``.

Also what ``spark-submit jobs/model_avg.py`` calls. Every input error ends
the process with status 2 and one line on stderr; nothing is left half-written.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from nnlib.errors import ConfigError, NnlibError


def build_run_parser(prog: str) -> argparse.ArgumentParser:
    """The parser of the job scripts, which take ``run``'s arguments directly."""
    parser = argparse.ArgumentParser(prog=prog, description="Distributed batch training of MLPs.")
    add_run_arguments(parser)
    return parser


def build_parser(prog: str = "nnlib") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description="Distributed batch training of MLPs.")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="train as a conf file says")
    add_run_arguments(run)
    return parser


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("conf", nargs="?", help="conf file (default: conf/default.yaml)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, e.g. --set mappers=8 (repeatable)")
    parser.add_argument("--out", help="run directory (default: runs/<timestamp>)")
    parser.add_argument("--overwrite", action="store_true", help="replace a finished run in --out")
    parser.add_argument("--resume", metavar="DIR",
                        help="continue the run in DIR from its last checkpoint (only train.rounds may change)")
    parser.add_argument("--quiet", action="store_true", help="no per-round progress lines")


def resolve_config(args: argparse.Namespace):
    """The run's config: CONF (or conf/default.yaml) plus --set; with --resume, the saved one.

    ``--resume DIR`` starts from ``DIR/config.yaml``; a CONF or --set given
    alongside may change ``train.rounds`` and nothing else.
    """
    from nnlib.config import (
        build_config,
        default_conf_path,
        diff_keys,
        load_config,
        read_layered,
        read_yaml,
    )
    from nnlib.driver import with_absolute_paths

    if not args.resume:
        return load_config(args.conf if args.conf is not None else default_conf_path(), args.overrides)
    if args.out and Path(args.out).resolve() != Path(args.resume).resolve():
        raise ConfigError(f"--resume {args.resume} writes to that directory; --out {args.out} names another")
    saved_file = Path(args.resume) / "config.yaml"
    if not saved_file.is_file():
        raise ConfigError(f"--resume: {args.resume} holds no run (config.yaml not found)")
    saved = build_config(read_yaml(saved_file), source=str(saved_file))
    base = read_layered(args.conf) if args.conf else read_yaml(saved_file)
    requested = with_absolute_paths(build_config(base, args.overrides, source=args.conf or str(saved_file)))
    differ = [k for k in diff_keys(saved, requested) if k != "train.rounds"]
    if differ:
        raise ConfigError(f"--resume {args.resume}: the config differs from the run's in {', '.join(differ)}; "
                          "only train.rounds may change")
    return requested


def progress_log(quiet: bool):
    """Where the driver's per-round lines go: stdout, flushed, or nowhere."""
    return (lambda _msg: None) if quiet else (lambda msg: print(msg, flush=True))


def print_final(summary: dict, run_dir: Path) -> None:
    """The closing line of a run."""
    print(f"final test accuracy {summary['final_test_accuracy']:.4f}, test loss {summary['final_test_loss']:.4f}, "
          f"{summary['wall_seconds']:.1f}s; outputs in {run_dir}", flush=True)


def run_command(args: argparse.Namespace) -> int:
    """Load the config, open the run directory, run the driver, print where the outputs are."""
    from nnlib.driver import run
    from nnlib.outputs import RunDir, default_run_dir

    config = resolve_config(args)
    if config.engine == "mpi":
        from nnlib.engines.mpi import launch_or_run

        return launch_or_run(config, args)
    out = args.resume or args.out
    run_dir = RunDir(Path(out) if out else default_run_dir(), overwrite=args.overwrite, resume=bool(args.resume))
    log = progress_log(args.quiet)
    log(f"nnlib: engine={config.engine} mappers={config.mappers} combine={config.combine} "
        f"data={config.data.source} -> {run_dir.path}")
    result = run(config, run_dir, log=log, resume=bool(args.resume))
    print_final(result.summary, run_dir.path)
    return 0


def main(argv: list[str] | None = None, prog: str = "nnlib") -> int:
    args = build_parser(prog).parse_args(argv)
    try:
        return run_command(args)
    except NnlibError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2


def entry_point() -> None:
    sys.exit(main())
