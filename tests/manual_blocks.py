"""The manual's fenced code blocks (README.md and the markdown pages under docs/) and a runner for their commands.

A block is found by its fence, whatever page or heading it sits under: tests/test_manual.py classifies blocks by
their content (a distinctive substring), so text moving between pages keeps its classification.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shlex
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# fence kinds that hold commands, and those that hold what a command prints or reads (never run)
SHELL_KINDS = {"bash", "sh", "shell", "console", "zsh"}
PYTHON_KINDS = {"python", "py", "python3"}
NOT_COMMAND_KINDS = {"yaml", "yml", "text", "txt", "json", "toml", "ini", "csv", "output", "log", "diff", "mermaid"}
NOT_COMMAND_KINDS |= {"properties", "conf", "html", "xml", "markdown", "md", "dockerfile", "mpl"}
# a fence without a kind holds commands when its first line starts with one of these programs (else it is output,
# a diagram or a config snippet); a line starting with "$ " is a console transcript's command
COMMAND_WORDS = {"nnlib", "python", "python3", "pip", "spark-submit", "spark-class", "mpiexec", "mpirun", "mkdir"}
COMMAND_WORDS |= {"./submit.sh", "sbatch", "srun", "cd", "export", "for", "printf", "echo", "cat", "mlflow", "ruff"}
COMMAND_WORDS |= {"mypy", "mkdocs", "git"}

FENCE = re.compile(
    r"^(?P<indent>[ ]*)(?P<fence>`{3,}|~{3,})[ ]*(?P<kind>[\w+-]*)[^\n]*\n(?P<body>.*?)^(?P=indent)(?P=fence)[ ]*$",
    re.M | re.S,
)


@dataclass(frozen=True)
class Block:
    """One fenced block: the page (relative to the repository), its line, fence kind, and text (dedented)."""

    page: str
    line: int
    kind: str
    text: str

    @property
    def language(self) -> str:
        """``shell``, ``python``, or ``none`` (output, config, a diagram: not commands)."""
        if self.kind in SHELL_KINDS:
            return "shell"
        if self.kind in PYTHON_KINDS:
            return "python"
        if self.kind in NOT_COMMAND_KINDS:
            return "none"
        if self.kind == "":
            first = self.text.lstrip().split(None, 1)
            if first and (first[0] in COMMAND_WORDS or first[0] == "$"):
                return "shell"
            return "none"
        return "unknown"  # a fence kind the harness does not know: test_manual fails on it

    def _transcript(self) -> tuple[list[str], list[str]] | None:
        """A console transcript's command lines (``$ `` and the lines a ``\\`` continues) and printed lines."""
        lines = self.text.splitlines()
        if not any(line.startswith("$ ") for line in lines):
            return None
        commands, printed, going_on = [], [], False
        for line in lines:
            if line.startswith("$ ") or going_on:
                commands.append(line[2:] if line.startswith("$ ") else line)
                going_on = line.endswith("\\")
            else:
                printed.append(line)
        return commands, printed

    @property
    def commands(self) -> str:
        """The block's commands: a console transcript's commands (the rest is their output), else the text."""
        transcript = self._transcript()
        return self.text if transcript is None else "\n".join(transcript[0]) + "\n"

    @property
    def output(self) -> str:
        """A console transcript's printed lines (empty for a block of commands alone)."""
        transcript = self._transcript()
        return "" if transcript is None else "\n".join(transcript[1])

    @property
    def id(self) -> str:
        """The page, the line and the first command line, for a test id that names the block."""
        first = next((ln.strip() for ln in self.commands.splitlines() if ln.strip()), "")
        return f"{self.page}:{self.line}: {first[:70]}"


def manual_pages() -> list[Path]:
    """README.md and every markdown page under docs/ (whatever is there now)."""
    pages = [ROOT / "README.md"]
    pages += sorted(p for p in (ROOT / "docs").rglob("*.md") if not any(part.startswith(".") for part in p.parts))
    return [p for p in pages if p.is_file()]


def blocks_of(page: Path) -> list[Block]:
    """Every fenced block of ``page``."""
    text = page.read_text()
    found = []
    for m in FENCE.finditer(text):
        body = textwrap.dedent(m.group("body"))
        found.append(Block(str(page.relative_to(ROOT)), text[: m.start()].count("\n") + 1, m.group("kind"), body))
    return found


def manual_blocks() -> list[Block]:
    """Every fenced block of the manual, in page order."""
    return [b for page in manual_pages() for b in blocks_of(page)]


# ---- running a block's commands ---------------------------------------------------------------------------------

HEREDOC = re.compile(r"<<-?\s*['\"]?(\w+)['\"]?")


def split_steps(commands: str) -> list[str]:
    """The commands as the shell reads them: a step ends where its quotes, heredoc, loop and ``\\`` do."""
    steps, buffer, heredoc = [], [], None
    for line in commands.splitlines():
        buffer.append(line)
        if heredoc:
            if line.strip() == heredoc:
                heredoc = None
            else:
                continue
        elif m := HEREDOC.search(line):
            heredoc = m.group(1)
            continue
        text = "\n".join(buffer)
        if not text.strip() or text.rstrip().endswith("\\"):
            if not text.strip():
                buffer = []
            continue
        try:
            words = shlex.split(text, comments=True)
        except ValueError:  # an open quote: a python -c "..." over several lines
            continue
        if words.count("do") > words.count("done"):
            continue
        steps.append(text)
        buffer = []
    if buffer and "\n".join(buffer).strip():
        steps.append("\n".join(buffer))
    return steps


def tokens(step: str) -> list[str]:
    """``step``'s words, with the shell's operators (``&&``, ``|``, ``>``, ``;``, ``&``) as words of their own."""
    lexer = shlex.shlex(step.replace("\\\n", " "), posix=True, punctuation_chars=True)  # a line continued
    lexer.whitespace_split = True
    lexer.commenters = "#"
    return list(lexer)


def in_process_parts(step: str) -> list[list[str]] | None:
    """The ``&&``-joined commands of ``step`` when each runs in this process (``nnlib ...``, ``python -c CODE``,
    ``mkdir -p DIR``) and the step needs no shell (no pipe, redirect, variable or loop); else None."""
    words = tokens(step)
    parts, part = [], []
    for word in words:
        if word == "&&":
            parts.append(part)
            part = []
        elif word and (word[0] in "|;<>&" or "$" in word or "`" in word):
            return None
        else:
            part.append(word)
    parts.append(part)
    for part in parts:
        if not part:
            return None
        if part[0] == "nnlib":
            continue
        if part[0] in ("python", "python3") and len(part) == 3 and part[1] == "-c":
            continue
        if part[:2] == ["mkdir", "-p"]:
            continue
        return None
    return parts


@dataclass
class Outcome:
    status: int
    output: str


def run_in_process(part: list[str]) -> Outcome:
    """One command in this process (the working directory is the caller's): nnlib's CLI, a ``python -c`` snippet,
    or ``mkdir -p``; what it prints to stdout and stderr is the output."""
    from nnlib.cli import main

    out = io.StringIO()
    status = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        try:
            if part[0] == "nnlib":
                status = main(part[1:])
            elif part[0] == "mkdir":
                for folder in part[2:]:
                    os.makedirs(folder, exist_ok=True)
            else:
                exec(compile(part[2], "<manual python -c>", "exec"), {"__name__": "__main__"})
        except SystemExit as stop:
            status = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
    return Outcome(status or 0, out.getvalue())


def run_in_shell(step: str, cwd: Path, env: dict, timeout: float) -> Outcome:
    """``step`` in bash (``set -euo pipefail``) in ``cwd``; stdout and stderr together are the output."""
    proc = subprocess.run(
        ["bash", "-c", "set -euo pipefail\n" + step],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
    )
    return Outcome(proc.returncode, proc.stdout)


def shell_env() -> dict:
    """The environment a block's shell steps get: this interpreter's bin folder first on PATH (nnlib, spark-submit,
    mpiexec of the venv), executors on this interpreter."""
    bin_dir = str(Path(sys.executable).parent)
    env = dict(os.environ)
    env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")
    env.setdefault("PYSPARK_PYTHON", sys.executable)
    env.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    return env


def syntax_error(block: Block) -> str | None:
    """None where the block parses (``bash -n`` for shell, compile for Python, and the ``python -c`` snippets and
    Python heredocs inside shell), else the error."""
    if block.language == "python":
        try:
            compile(block.text, block.id, "exec")
        except SyntaxError as err:
            return f"{err.msg} (line {err.lineno})"
        return None
    proc = subprocess.run(["bash", "-n"], input=block.commands, capture_output=True, text=True)
    if proc.returncode != 0:
        return proc.stderr.strip()
    for step in split_steps(block.commands):
        code = None
        if m := re.match(r"\s*python3? - <<-?\s*['\"]?(\w+)['\"]?\n(.*)\n\s*\1\s*$", step, re.S):
            code = m.group(2)
        else:
            try:
                words = shlex.split(step, comments=True)
            except ValueError as err:
                return f"{err}: {step}"
            for i, word in enumerate(words[:-1]):
                if word in ("python", "python3") and words[i + 1] == "-c" and i + 2 < len(words):
                    code = words[i + 2]
        if code is not None:
            try:
                compile(code, block.id, "exec")
            except SyntaxError as err:
                return f"Python: {err.msg} (line {err.lineno}): {step[:200]}"
    return None
