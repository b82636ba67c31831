"""Every command of the manual (README.md and the markdown pages under docs/) is run, already run by a named test,
or marked as needing what this machine has not (a cluster, a remote host, a user's own data) and checked for syntax.

A block is classified by a distinctive substring of its text, never by the page or heading it sits under, so text
moving between pages keeps its classification. A block of commands that no table names fails
:func:`test_every_block_of_commands_is_classified_once`, and so does a table entry that names no block.

Blocks run in a folder of their own under the test's tmp_path (``conf``, ``jobs``, ``examples``, ``bench`` and
``nnlib`` linked in, so the manual's relative paths hold): a run leaves nothing in the repository's folder, which
``git status`` checks. ``nnlib ...``, ``python -c`` and ``mkdir -p`` run in this process (an ``engine=spark`` run on
the test run's SparkSession); any other step runs in bash, this interpreter's bin folder first on PATH. A ``pip
install`` step is not run: the extras it names must be nnlib's. Figures the manual quotes are checked in what the
block prints.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from dataclasses import dataclass
from importlib import metadata

import pytest
from manual_blocks import (
    ROOT,
    Block,
    in_process_parts,
    manual_blocks,
    manual_pages,
    run_in_process,
    run_in_shell,
    shell_env,
    split_steps,
    syntax_error,
    tokens,
)


@dataclass(frozen=True)
class Run:
    """How this test runs a block.

    expect: what the manual quotes that the block prints (each must be in the manual's text too, so a quote that
    changes fails here until the check follows). setup: commands the manual says to run first (each quoted in the
    manual). shrink: ``(text, replacement)`` pairs that make a long block small (each text must be in the block),
    with ``why_shrunk`` saying why. spark: the block's in-process ``nnlib`` runs use the test run's SparkSession.
    own_process: every step runs in bash, ``nnlib`` too (a relative path given to Spark is resolved in the JVM's
    folder, and the test run's JVM started in the repository's).
    """

    expect: tuple[str, ...] = ()
    setup: tuple[str, ...] = ()
    shrink: tuple[tuple[str, str], ...] = ()
    why_shrunk: str = ""
    spark: bool = False
    own_process: bool = False
    slow: bool = True
    timeout: float = 600


DIGITS = "nnlib run --out runs/digits"  # "Every example below runs after `nnlib run --out runs/digits`"
SMALL_SETS = "--set engine=local --set data.n_samples=4000 --set model.hidden=[32] --set train.rounds=2"
SMALL_SWEEP = "--set engine=local --set data.n_samples=2000 --set train.rounds=1 --set train.local_epochs=1"
MAPPER_LOOP = "for s in 0 1 2; do for m in 1 2 4 8; do"
MAPPER_RUN = "--set seed=$s --out runs/mappers/m$m-s$s"
MAPPER_SHRINK = (
    (MAPPER_LOOP, "for s in 0 1; do for m in 1 2; do"),
    (MAPPER_RUN, f"{SMALL_SETS} {MAPPER_RUN}"),
    ("conf/experiments/mappers.yaml --out", f"conf/experiments/mappers.yaml {SMALL_SETS} --out"),
)
MAPPER_WHY = (
    "the mapper comparison is 12 Spark runs on 200,000 samples (~20 min): here 2 seeds x 1 and 2 mappers on the "
    "local engine, 4,000 samples, 2 rounds (the sweep: its 12 runs so)"
)
STUDY_WHY = (
    "the full sweep is a study (20-60 runs, minutes to hours; docs/experiments/ holds its results): here every run "
    "is one round of one epoch on the local engine, 2,000 samples"
)

# (a) run by this test
RUN: dict[str, Run] = {
    "# the built-in defaults on the local engine": Run(
        # the default run's round line, quoted beside the command line's synopsis; its seconds are left out
        expect=("round 5/5  test_acc 0.9694  test_loss 0.2062  train_loss 0.2165",),
        shrink=MAPPER_SHRINK[:2],
        why_shrunk=MAPPER_WHY,
    ),
    "# the counts interleaved seed by seed": Run(shrink=MAPPER_SHRINK, why_shrunk=MAPPER_WHY),
    "run = nnlib.train(overrides=": Run(expect=("0.9637", "(3, 14)"), slow=False),
    "model = nnlib.load_model('runs/digits')": Run(setup=(DIGITS,), expect=("[0 1 2 3 4]",), slow=False),
    "nnlib predict runs/digits digits --out": Run(
        setup=(DIGITS,), expect=("predict: 1797 rows; accuracy 0.9661, loss 0.1985; predictions in",), slow=False
    ),
    "nnlib predict runs/digits digits --set engine=spark": Run(
        setup=(DIGITS,), expect=("predict: 1797 rows; accuracy 0.9661, loss 0.1985; predictions in",), own_process=True
    ),
    # its own process: Spark writes models/digits-pipeline relative to the JVM's folder, and the test run's JVM
    # started in the repository
    "NNClassifier(mappers=2, rounds=5)": Run(expect=("test accuracy 0.9631", "loaded 0.9631")),
    "nnlib export runs/digits --format onnx": Run(
        setup=(DIGITS,), expect=("[0 1 2 3 4]", "tensor([0, 1, 2, 3, 4])"), slow=False
    ),
    "spark-submit jobs/model_avg.py examples/own_model.yaml": Run(),
    "nnlib run --set model.type=cnn --set engine=spark": Run(
        expect=(
            "model: cnn (1x8x8 image, conv channels [16, 32], 5x5), 14,538 parameters, numpy backend",
            "final test accuracy 0.9666, test loss 0.1290",
        ),
        spark=True,
    ),
    "np.savez('runs/friedman.npz', x=x, y=y)": Run(),
    "nnlib split-search conf/separation.yaml --out runs/separation": Run(
        expect=(
            "split-search: 35 distinct splits of hidden [8] into 2 equal groups; all evaluated",
            "unsplit baseline 0.8440; 35 splits: mean 0.8520, 0.8078 to 0.8802, 25 beat the baseline",
            "best: #2 [0 1 2 5 | 3 4 6 7] accuracy 0.8802, cross-group coupling 0.149, weight balance 0.89",
            "worst: #10 [0 1 4 6 | 2 3 5 7] accuracy 0.8078, cross-group coupling 0.146, weight balance 0.99",
            "correlation of accuracy with coupling over the splits: +0.03",
            "correlation of accuracy with weight balance over the splits: -0.08",
        ),
        slow=False,
    ),
    "--out runs/submit-wins": Run(
        expect=(
            "nnlib: warning: spark.master local[3] is not used: spark-submit's master local[2] is (its --master, "
            "--conf spark.master or spark-defaults.conf, else its default local[*]; spark-submit's wins)",
            "master: local[2]",
            "master: local[3]",
        ),
    ),
    "nnlib run --set engine=mrjob --set mrjob.runner=inline": Run(),
    "python jobs/mr_model_avg.py -r local --nnlib-conf conf/default.yaml": Run(),
    "mpiexec -n 2 python jobs/mpi_model_avg.py conf/default.yaml --set mappers=2": Run(),
    "nnlib sweep conf/experiments/threads.yaml && nnlib report runs/sweep-threads": Run(
        shrink=(
            ("nnlib sweep conf/experiments/threads.yaml", f"nnlib sweep conf/experiments/threads.yaml {SMALL_SWEEP}"),
        ),
        why_shrunk=STUDY_WHY,
    ),
    # a study's page ends with the commands that reproduce it, the sweep and then one of its runs alone: the form is
    # the same on every study's page (nnlib report writes it), so one runs here; the others are checked in (c)
    "nnlib sweep conf/experiments/hadoop.yaml --out": Run(
        shrink=(
            (
                "nnlib sweep conf/experiments/hadoop.yaml --out",
                f"nnlib sweep conf/experiments/hadoop.yaml {SMALL_SWEEP} --out",
            ),
        ),
        why_shrunk=STUDY_WHY,
    ),
}

# (b) run by another test: (file, text) pairs, each text in the block and in the file
ELSEWHERE: dict[str, tuple[tuple[str, str], ...]] = {
    # the first command: .ci/run sets up the venv the same way; tests/test_spark_submit.py runs the job
    "pip install -e . && spark-submit jobs/model_avg.py": (
        (".ci/run", "python3 -m venv .venv && . .venv/bin/activate && pip install -e "),
        ("tests/test_spark_submit.py", "jobs/model_avg.py"),
    ),
    # the second: the test command itself, .ci/run's last line
    'pip install -e ".[test]" && python -m pytest -q tests': (
        (
            ".ci/run",
            'python3 -m venv .venv && . .venv/bin/activate && pip install -e ".[test]" && python -m pytest -q tests',
        ),
    ),
    "sql.connect.service.SparkConnectServer": (
        ("tests/spark_cluster.py", "spark.connect.grpc.binding.address"),
        ("tests/spark_cluster.py", "spark.connect.grpc.binding.port"),
        ("tests/test_spark_connect_ml.py", "spark_connect_pipeline.py"),
        ("tests/test_regression_report.py", "spark.remote="),
    ),
    "spark-submit --conf spark.driver.defaultJavaOptions=-Dlog4j2.configurationFile": (
        (
            "tests/test_first_hour.py",
            "spark.driver.defaultJavaOptions=-Dlog4j2.configurationFile=nnlib/engines/spark/log4j2.properties",
        ),
    ),
    "--out runs/cluster-defaults": (
        ("tests/spark_cluster.py", "org.apache.spark.deploy.master.Master"),
        ("tests/spark_cluster.py", "org.apache.spark.deploy.worker.Worker"),
        ("tests/test_spark_session.py", "spark-defaults.conf"),
        ("tests/test_spark_session.py", "./submit.sh"),
    ),
    "spark.worker.resource.gpu.discoveryScript": (
        ("tests/test_spark_session.py", "spark.worker.resource.gpu.discoveryScript"),
        ("tests/test_spark_session.py", "spark.task_gpus"),
        ("tests/test_spark_session.py", "train.device"),
    ),
    "mkdocs build --strict -f docs/mkdocs.yml": (("tests/test_docs.py", "mkdocs build --strict -f docs/mkdocs.yml"),),
    "ruff format --config .ci/ruff.toml": (
        ("tests/test_lint.py", "ruff"),
        ("tests/test_lint.py", ".ci/ruff.toml"),
        ("tests/test_lint.py", "mypy"),
        ("tests/test_lint.py", ".ci/mypy.ini"),
    ),
}

# (c) not runnable here: the reason; checked for syntax
NOT_HERE: dict[str, str] = {
    "mlflow ui --backend-store-uri": "starts MLflow's web UI, a server that runs until stopped",
    "cv.fit(train_df)": "a user's own DataFrames (train_df, test_df with price and w columns)",
    "./submit.sh --master spark://head:7077": "a remote Spark cluster (spark://head:7077)",
    "--hostfile hosts": "remote MPI hosts (node01, node02) and a shared folder /shared/runs",
    "sbatch examples/slurm/": "a SLURM cluster (sbatch, srun) and a shared folder /shared/runs",
    'python -m pytest -q -m "not slow" tests': "the fast tier of this test suite, which holds this test",
    "--set data.source=blobs/": "a user's own data (blobs/, shards of ~2.5 GB) on a cluster's executors",
}
# the studies' reproducing commands but hadoop's (run in (a) in a small form); their sweep files are planned in (c)
for _study in ("data_parallel", "ist", "label_skew", "mpi_slides", "recipe", "summing", "threads"):
    NOT_HERE[f"nnlib sweep conf/experiments/{_study}.yaml --out"] = (
        "a study of 15-60 runs (minutes to hours, docs/experiments/ holds its results); the same two commands run "
        "in a small form on hadoop's page"
    )


# blocks whose quoted figures no longer match what the command prints: the manual's text is to be fixed; the
# check is an expected failure until then, and fails as soon as the figures match (remove the entry then)
STALE_FIGURES: dict[str, str] = {}

KEYS = [*RUN, *ELSEWHERE, *NOT_HERE]
BLOCKS = manual_blocks()
COMMAND_BLOCKS = [b for b in BLOCKS if b.language != "none"]
MANUAL_TEXT = "\n".join(page.read_text() for page in manual_pages())
# repository entries a block's relative paths name, linked into its folder
LINKED = ("conf", "jobs", "examples", "bench", "nnlib", "submit.sh")


def keys_of(block: Block) -> list[str]:
    return [key for key in KEYS if key in block.text]


def unique(blocks: list[Block]) -> list[Block]:
    """One block per text (while text moves, a block may stand on two pages)."""
    seen, kept = set(), []
    for block in blocks:
        if block.text not in seen:
            seen.add(block.text)
            kept.append(block)
    return kept


def classified(table: dict) -> list[tuple[Block, str]]:
    return [(b, keys_of(b)[0]) for b in unique(COMMAND_BLOCKS) if len(keys_of(b)) == 1 and keys_of(b)[0] in table]


# ---- classification -----------------------------------------------------------------------------------------


def test_the_manual_has_blocks_of_commands():
    assert len(COMMAND_BLOCKS) >= 20, [b.id for b in BLOCKS]


def test_every_block_of_commands_is_classified_once():
    problems = []
    for block in COMMAND_BLOCKS:
        keys = keys_of(block)
        if block.language == "unknown":
            problems.append(f"{block.page}:{block.line}: fence kind {block.kind!r} is neither commands nor output")
        elif len(keys) != 1:
            found = "no table entry" if not keys else f"several entries {keys}"
            problems.append(f"{block.page}:{block.line}: {found} names the block:\n{block.text[:400]}")
    assert not problems, "run it, name the test that runs it, or say why it cannot run here:\n" + "\n".join(problems)


def test_every_table_entry_names_a_block():
    stale = [key for key in KEYS if not any(key in b.text for b in COMMAND_BLOCKS)]
    assert not stale, f"table entries that match no block of the manual: {stale}"
    assert set(STALE_FIGURES) <= set(RUN)


def test_the_shrunk_blocks_say_why_and_every_shrink_is_in_a_block():
    assert [key for key, spec in RUN.items() if spec.shrink and not spec.why_shrunk] == []
    stale = [
        (key, text)
        for key, spec in RUN.items()
        for text, _ in spec.shrink
        if not any(key in b.text and text in b.commands for b in COMMAND_BLOCKS)
    ]
    assert not stale, f"shrinks that match no block: {stale}"


# ---- (b) run elsewhere, (c) not runnable here ---------------------------------------------------------------------


@pytest.mark.parametrize(("block", "key"), classified(ELSEWHERE), ids=lambda v: v.id if isinstance(v, Block) else "")
def test_a_block_run_by_another_test_is_in_that_test(block, key):
    for path, text in ELSEWHERE[key]:
        assert text in block.text, f"{text!r} is not in the block any more:\n{block.text}"
        assert text in (ROOT / path).read_text(), f"{path} does not hold {text!r}"
    assert syntax_error(block) is None, syntax_error(block)


def config_errors(block: Block) -> list[str]:
    """The errors of the conf and sweep files the block's ``nnlib run CONF`` and ``nnlib sweep FILE`` name (each
    with the step's ``--set`` overrides), where the file is in the repository: nnlib checks each run's config."""
    from nnlib.config import load_config
    from nnlib.errors import NnlibError
    from nnlib.experiments.sweep import plan_sweep

    errors = []
    for step in split_steps(block.commands):
        words = tokens(step)
        for i, word in enumerate(words[:-2]):
            if word != "nnlib" or words[i + 1] not in ("run", "sweep") or not words[i + 2].endswith(".yaml"):
                continue
            path, sets = ROOT / words[i + 2], []
            rest = words[i + 3 :]
            for j, item in enumerate(rest[:-1]):
                if item == "--set" and "$" not in rest[j + 1]:
                    sets.append(rest[j + 1])
            if not path.is_file():
                continue
            try:
                if words[i + 1] == "sweep":
                    plan_sweep(path, sets)
                else:
                    load_config(path, sets)
            except NnlibError as err:
                errors.append(f"{words[i + 2]}: {err}")
    return errors


@pytest.mark.parametrize(("block", "key"), classified(NOT_HERE), ids=lambda v: v.id if isinstance(v, Block) else "")
def test_a_block_that_cannot_run_here_parses_and_its_conf_files_load(block, key):
    assert syntax_error(block) is None, syntax_error(block)
    assert config_errors(block) == []


def test_a_conf_file_error_is_found():
    assert config_errors(Block("x.md", 1, "bash", "nnlib run conf/default.yaml --set mapers=2\n"))
    assert config_errors(Block("x.md", 1, "bash", "nnlib sweep conf/experiments/ist.yaml --set train.lr=-1\n"))
    assert config_errors(Block("x.md", 1, "bash", "nnlib sweep conf/experiments/ist.yaml --set train.lr=0.1\n")) == []


def test_a_syntax_error_is_found():
    assert syntax_error(Block("x.md", 1, "bash", "for x in 1; do echo\n")) is not None
    assert syntax_error(Block("x.md", 1, "bash", 'python -c "print(1"\n')) is not None
    assert syntax_error(Block("x.md", 1, "python", "print(1\n")) is not None
    assert syntax_error(Block("x.md", 1, "bash", "python - <<'EOF'\nprint(1\nEOF\n")) is not None


# ---- (a) run ------------------------------------------------------------------------------------------------------


def repository_paths() -> set[str]:
    """The untracked paths ``git status`` lists, and every path under the ignored runs/ (the manual's output
    folder: a block run in the repository's folder would write there)."""
    status = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=all"], cwd=ROOT, capture_output=True, text=True
    ).stdout
    paths = {line[3:] for line in status.splitlines() if line.startswith("?? ")}
    return paths | {str(p.relative_to(ROOT)) for p in (ROOT / "runs").rglob("*")}


def left_behind(before: set[str], commands: str) -> list[str]:
    """Paths new in the repository's folder since ``before`` that a block may have written: under runs/, beside the
    repository's own folders, or in the folders linked into the block's folder (conf, jobs, ...) with a name the
    commands give. The checkout may change beside the test (an editor, another test run) in its own folders."""
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True).stdout.splitlines()
    own_folders = {path.split("/")[0] for path in tracked if "/" in path}
    named = set(re.findall(r"[\w.-]+", commands))
    return sorted(
        path
        for path in repository_paths() - before
        if path.split("/")[0] == "runs" or path.split("/")[0] not in own_folders or path.split("/")[-1] in named
    )


def extras_named(words: list[str]) -> set[str]:
    """The extras a ``pip install`` names: ``-e ".[mpi]"``, ``'nnlib[onnx]'``."""
    found = set()
    for word in words[2:]:
        if m := re.fullmatch(r"(?:\.|nnlib)\[([\w,-]+)\]", word):
            found |= set(m.group(1).split(","))
    return found


def run_params():
    params = []
    for block, key in classified(RUN):
        marks = [pytest.mark.slow] if RUN[key].slow else []
        params.append(pytest.param(block, key, marks=marks, id=block.id))
    return params


@pytest.mark.parametrize(("block", "key"), run_params())
def test_a_block_runs_and_prints_what_the_manual_quotes(block, key, request, tmp_path, monkeypatch):
    spec = RUN[key]
    if spec.spark:
        request.getfixturevalue("spark")
    work = tmp_path / "work"
    work.mkdir()
    for name in LINKED:
        (work / name).symlink_to(ROOT / name)
    monkeypatch.chdir(work)
    if hasattr(os, "geteuid") and os.geteuid() == 0:  # Open MPI refuses root without these (a CI container's user)
        monkeypatch.setenv("OMPI_ALLOW_RUN_AS_ROOT", "1")
        monkeypatch.setenv("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
    before = repository_paths()

    commands = block.commands
    for text, replacement in spec.shrink:  # test_the_shrunk_blocks_say_why... checks each is in some block
        commands = commands.replace(text, replacement)
    output = []
    for command in spec.setup:
        assert command in MANUAL_TEXT, f"the manual no longer says to run {command!r} first"
        outcome = run_in_process(shlex.split(command))
        assert outcome.status == 0, outcome.output[-3000:]
    for step in split_steps(commands):
        words = tokens(step)
        if not words:
            continue
        if words[:2] == ["pip", "install"]:
            named = extras_named(words)
            assert named and named <= set(metadata.metadata("nnlib").get_all("Provides-Extra") or []), step
            continue
        parts = None if spec.own_process else in_process_parts(step)
        for part in parts or []:
            outcome = run_in_process(part)
            output.append(outcome.output)
            assert outcome.status == 0, f"{shlex.join(part)[:300]} exited {outcome.status}:\n{outcome.output[-3000:]}"
        if parts is None:
            outcome = run_in_shell(step, work, shell_env(), spec.timeout)
            output.append(outcome.output)
            assert outcome.status == 0, f"{step[:300]} exited {outcome.status}:\n{outcome.output[-3000:]}"
    printed = "".join(output)

    missing = []
    for figure in spec.expect:
        assert figure in MANUAL_TEXT, f"the manual no longer quotes {figure!r}: follow it here"
        if figure not in printed:
            missing.append(figure)
    assert left_behind(before, commands) == [], "the block left files in the repository's folder"
    if key in STALE_FIGURES:
        assert missing, f"the figures match now: remove {key!r} from STALE_FIGURES"
        pytest.xfail(STALE_FIGURES[key])
    assert not missing, f"not printed: {missing}\nprinted:\n{printed[-4000:]}"


def test_a_file_a_block_leaves_in_the_repository_is_found():
    probe = ROOT / "runs" / f"manual-probe-{os.getpid()}"
    before = repository_paths()
    probe.mkdir(parents=True)
    try:
        (probe / "model.npz").write_bytes(b"")
        assert left_behind(before, "nnlib run") == [f"runs/{probe.name}", f"runs/{probe.name}/model.npz"]
    finally:
        (probe / "model.npz").unlink()
        probe.rmdir()
