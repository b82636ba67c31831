"""Command line: ``nnlib run [CONF] [--set key=value ...] [--out DIR] [--overwrite]``.

Also what ``spark-submit jobs/model_avg.py`` calls. Every input error ends
the process with status 2 and one line on stderr; nothing is left half-written.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from nnlib.errors import NnlibError


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
    parser.add_argument("--quiet", action="store_true", help="no per-round progress lines")


def run_command(args: argparse.Namespace) -> int:
    """Load the config, open the run directory, run the driver, print where the outputs are."""
    from nnlib.config import default_conf_path, load_config
    from nnlib.driver import run
    from nnlib.outputs import RunDir, default_run_dir

    conf = args.conf if args.conf is not None else default_conf_path()
    config = load_config(conf, args.overrides)
    if config.engine == "mpi":
        from nnlib.engines.mpi import launch_or_run

        return launch_or_run(config, args)
    run_dir = RunDir(Path(args.out) if args.out else default_run_dir(), overwrite=args.overwrite)
    log = (lambda _msg: None) if args.quiet else (lambda msg: print(msg, flush=True))
    log(f"nnlib: engine={config.engine} mappers={config.mappers} combine={config.combine} "
        f"data={config.data.source} -> {run_dir.path}")
    result = run(config, run_dir, log=log)
    s = result.summary
    print(f"final test accuracy {s['final_test_accuracy']:.4f}, test loss {s['final_test_loss']:.4f}, "
          f"{s['wall_seconds']:.1f}s; outputs in {run_dir.path}")
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
