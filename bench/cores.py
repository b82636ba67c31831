"""Where the cores go during a round: CPU milliseconds a round of every process of a run.

    python bench/cores.py           # Spark stage 2 mappers, MPI 2 ranks, the local engine; 16 rounds each
    python bench/cores.py --smoke   # a 6000x784 set, seconds

Wall time on this machine drifts by a third from minute to minute; the CPU a
process is given is steadier, and it says who takes the cores from the
mappers. While a run goes, every process on the machine is read from /proc
(user plus system time) when rounds.csv first holds round ``a`` and again
when it holds round ``b``; each process's difference is divided by the rounds
between. Roles: ``driver`` (the ``nnlib run`` process; under MPI, rank 0,
which trains a mapper too), ``rank 1``, ``spark JVM``, ``spark worker`` (a
Python worker, one per mapper), ``other`` (this script, anything else).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, bench_env, markdown_table, mpi_launcher, scratch, synthetic_npz, write_result  # noqa: E402
from speedup import run_sets  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


def snapshot() -> dict[int, tuple[str, float]]:
    """``pid -> (command line, CPU seconds)`` of every process readable in /proc."""
    out = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            out[int(entry)] = (cmdline, (int(fields[11]) + int(fields[12])) / TICK)
    return out


def role(cmdline: str, driver_pids: list[int], pid: int) -> str:
    if pid in driver_pids:
        rank = driver_pids.index(pid)
        return "driver" if rank == 0 else f"rank {rank}"
    if "pyspark.daemon" in cmdline:
        return "spark worker"
    if "java" in cmdline and "SparkSubmit" in cmdline:
        return "spark JVM"
    return "other"


def cpu_per_round(source: str, engine: str, mappers: int, rounds: int, first: int, last: int) -> dict:
    """CPU ms a round of each role between rounds ``first`` and ``last`` of one run, and its wall seconds a round."""
    launcher = mpi_launcher(mappers) if engine == "mpi" else []
    with scratch() as tmp:
        out = Path(tmp) / "run"
        cmd = [*launcher, sys.executable, "-m", "nnlib", "run", "--out", str(out), "--quiet"]
        for item in run_sets(source, [f"engine={engine}"], mappers, rounds):
            cmd += ["--set", item]
        proc = subprocess.Popen(
            cmd, cwd=ROOT, env=bench_env(Path(tmp)), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        marks = {}
        while proc.poll() is None and len(marks) < 2:
            try:
                done = len((out / "rounds.csv").read_text().splitlines()) - 1
            except OSError:
                done = 0
            for mark in (first, last):
                if mark not in marks and done >= mark:
                    marks[mark] = (time.perf_counter(), snapshot(), done)
            time.sleep(0.02)
        stderr = proc.communicate(timeout=600)[1]
        if proc.returncode != 0 or len(marks) < 2:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{stderr[-3000:]}")
    (t0, before, n0), (t1, after, n1) = marks[first], marks[last]
    n = n1 - n0
    # the run's own nnlib processes: the one launched, or mpiexec's ranks, in pid order (the ranks' order)
    drivers = sorted(pid for pid, (c, _) in after.items() if c.startswith(f"{sys.executable} -m nnlib run "))
    cpu: dict[str, list[float]] = {}
    for pid, (cmdline, seconds) in after.items():
        used = seconds - before.get(pid, (cmdline, 0.0))[1]
        if used > 0:
            cpu.setdefault(role(cmdline, drivers, pid), []).append(used / n * 1000)
    return {
        "wall_s_per_round": (t1 - t0) / n,
        "rounds_measured": n,
        "cpu_ms_per_round": {r: sorted(v, reverse=True) for r, v in sorted(cpu.items())},
    }


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args(argv)
    if args.smoke:
        print("smoke size: a few short rounds, so these figures show only that the script works")
    source = str(synthetic_npz(6000, 1000) if args.smoke else synthetic_npz())
    rounds, first, last = (5, 2, 4) if args.smoke else (16, 3, 14)
    rows = []
    for engine, mappers in (("spark", 2), ("mpi", 2), ("local", 1)):
        measured = cpu_per_round(source, engine, mappers, rounds, first, last)
        row = {"engine": engine, "mappers": mappers, **measured}
        # the run's own processes: "other" is this script and whatever else the machine runs
        cores = (
            sum(sum(v) for r, v in measured["cpu_ms_per_round"].items() if r != "other")
            / 1000
            / (measured["wall_s_per_round"])
        )
        row["cores_busy"] = cores
        rows.append(row)
        print(
            f"{engine} {mappers}: {measured['wall_s_per_round']:.3f} s a round, {cores:.2f} cores busy with the run; "
            "CPU ms a round: "
            + ", ".join(f"{r} {' + '.join(f'{x:.0f}' for x in v)}" for r, v in measured["cpu_ms_per_round"].items()),
            flush=True,
        )
    table = [
        {
            "engine": f"{r['engine']} {r['mappers']}",
            "s/round": r["wall_s_per_round"],
            **{k: " + ".join(f"{x:.0f}" for x in v) for k, v in r["cpu_ms_per_round"].items()},
        }
        for r in rows
    ]
    print(markdown_table(table, ["engine", "s/round", "driver", "rank 1", "spark worker", "spark JVM", "other"]))
    write_result("smoke/cores" if args.smoke else "cores", rows)
    return rows


if __name__ == "__main__":
    main()
