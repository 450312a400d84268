"""What a command shows on the terminal, and what goes to its log file instead.

A command prints its own progress lines and its result. Everything libraries say while it runs -- Prefect's
per-run logs (including the traceback Prefect's engine logs for every failed task and flow run), MLflow's run
links and registry notes, Python warnings -- goes to `<state folder>/logs/cli.log`. Prefect's API handler is
left as it is, so the Prefect UI still shows every task's logs. With `--verbose` the same records are shown on
stderr as well.

How: before Prefect is imported, `command_log` puts a file handler on the root logger. Prefect's logging set-up
(at `import prefect`) then leaves the root logger to the application and does not add its console handler
(`prefect.logging.configuration.setup_logging`: user handlers on root -> the `root` section is skipped); if
Prefect was imported already, its console handler is taken off root while the command runs. Around a flow call,
`library_output` also sends what libraries print to stdout/stderr into the log file.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from tollgate.paths import PROJECT_ROOT, StatePaths

LOG_NAME = "cli"  # StatePaths.log_file(LOG_NAME): <state folder>/logs/cli.log, next to the services' logs
MAX_LOG_BYTES = 20_000_000  # above this, the log moves to cli.log.1 when the next command starts
FORMAT = "%(asctime)s %(levelname)-7s %(name)s%(run)s - %(message)s"
# Loggers whose records go to the log file only (unless --verbose): Prefect's, captured warnings, our own.
FILE_ONLY = ("prefect", "py.warnings", "tollgate.app")

log = logging.getLogger("tollgate.app")

# Our own code, as opposed to a library: messages our tasks log through the run logger are progress.
OWN_CODE = tuple(str(PROJECT_ROOT / d) + os.sep for d in ("tasks", "flows"))


class RunFormatter(logging.Formatter):
    """The standard format plus the Prefect run a record belongs to (task run, else flow run), when it has one."""

    def __init__(self) -> None:
        super().__init__(FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        run = getattr(record, "task_run_name", None) or getattr(record, "flow_run_name", None)
        record.run = f" [{run}]" if run and run != "<unknown>" else ""
        return super().format(record)


class CommandLogHandler(logging.FileHandler):
    """Appends to the command log; the file (and its folder) is made only when the first record arrives, and
    each command's records start with a header naming the command line and pid."""

    def __init__(self, path: Path, header: str):
        super().__init__(path, mode="a", encoding="utf-8", delay=True)
        self.header = header
        self.setFormatter(RunFormatter())

    def _open(self) -> Any:
        path = Path(self.baseFilename)
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists() and path.stat().st_size > MAX_LOG_BYTES:
            path.replace(path.with_name(path.name + ".1"))
        stream = super()._open()
        stream.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {self.header}\n")
        return stream


class TerminalHandler(logging.Handler):
    """Records for the terminal: WARNING and above from anything but FILE_ONLY (what Python shows by default),
    or, with --verbose, everything. Writes to the current sys.stderr, so inside `library_output` it lands in the
    log file like any other library output."""

    def __init__(self, verbose: bool):
        super().__init__(logging.NOTSET if verbose else logging.WARNING)
        self.verbose = verbose
        self.setFormatter(RunFormatter())

    def filter(self, record: logging.LogRecord) -> bool:
        return self.verbose or not record.name.startswith(FILE_ONLY)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(self.format(record) + "\n")
        except Exception:
            self.handleError(record)


@dataclass
class CommandLog:
    """The running command's log file and the terminal it started with."""

    path: Path
    verbose: bool
    stdout: TextIO
    stderr: TextIO
    started: float = field(default_factory=time.perf_counter)

    def shown_path(self) -> str:
        """The log path as the user can type it (relative to the working folder when under it)."""
        try:
            return str(self.path.relative_to(Path.cwd()))
        except ValueError:
            return str(self.path)


_active: list[CommandLog] = []


def _capturing_warnings() -> bool:
    return getattr(logging, "_warnings_showwarning", None) is not None


@contextlib.contextmanager
def command_log(paths: StatePaths, argv: Sequence[str], verbose: bool = False) -> Iterator[CommandLog]:
    """Route library and Prefect logging to the command log (and, with `verbose`, to stderr) while the block runs;
    restores the logging set-up it found."""
    path = paths.log_file(LOG_NAME)
    file_handler = CommandLogHandler(path, f"tollgate {' '.join(argv)} (pid {os.getpid()})")
    terminal = TerminalHandler(verbose)
    root = logging.getLogger()
    displaced = [h for h in root.handlers if type(h).__name__ == "PrefectConsoleHandler"]
    for h in displaced:
        root.removeHandler(h)
    root.addHandler(file_handler)
    root.addHandler(terminal)
    level = log.level
    log.setLevel(logging.INFO)
    captured = _capturing_warnings()
    logging.captureWarnings(True)
    current = CommandLog(path, verbose, sys.stdout, sys.stderr)
    _active.append(current)
    try:
        yield current
    finally:
        _active.remove(current)
        if not captured:
            logging.captureWarnings(False)
        log.setLevel(level)
        root.removeHandler(terminal)
        root.removeHandler(file_handler)
        file_handler.close()
        for h in displaced:
            root.addHandler(h)


def current() -> CommandLog | None:
    """The log of the command running in this process, if one runs through the CLI."""
    return _active[-1] if _active else None


def say(message: str, err: bool = False) -> None:
    """A progress line on the terminal's stdout, or its stderr with `err` (also from inside `library_output`)."""
    where = current()
    if err:
        print(message, file=where.stderr if where else sys.stderr, flush=True)
    else:
        print(message, file=where.stdout if where else sys.stdout, flush=True)


class _LogStream(io.TextIOBase):
    """A text stream that turns each line written to it into a record of the `tollgate.app.output` logger."""

    def __init__(self, name: str):
        self.logger = logging.getLogger(f"tollgate.app.output.{name}")
        self.logger.setLevel(logging.INFO)
        self.buffer_ = ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self.buffer_ += text
        *lines, self.buffer_ = self.buffer_.split("\n")
        for line in lines:
            if line.strip():
                self.logger.info(line.rstrip())
        return len(text)

    def flush(self) -> None:
        if self.buffer_.strip():
            self.logger.info(self.buffer_.rstrip())
        self.buffer_ = ""


# A stage's progress line: fixed text, or built from the starting task run's parameters.
Phrase = str | Callable[[Mapping[str, Any]], str]

# Prefect's engine logs this (at DEBUG, inside the task run's context) when a task run starts.
TASK_STARTED = "Created task run "


class Progress(logging.Handler):
    """Progress lines from a flow run's own records: the Prefect run's UI link, one line when a task run named in
    `stages` starts, and every message our own tasks log (tasks/, flows/: waiting for traffic, approval).
    Prefect's engine messages (state changes, failures and their tracebacks) stay in the log file.

    `threshold` is the level the run loggers had: Prefect's DEBUG "task run started" record is created for this
    handler only, and the other handlers (the API's, the log file) still see what they saw before."""

    def __init__(self, stages: Mapping[str, Phrase], started: float, threshold: int, err: bool = False):
        super().__init__(logging.DEBUG)
        self.stages, self.started, self.threshold, self.err = stages, started, threshold, err
        self.linked = False

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self._line(record)
        except Exception:  # a phrase that no longer fits the task's parameters: the task's name alone
            line = f"{getattr(record, 'task_name', '?')} ..."
        if line:
            say(f"  [{time.perf_counter() - self.started:6.1f} s] {line}", err=self.err)

    def _line(self, record: logging.LogRecord) -> str | None:
        message = record.getMessage()
        if record.pathname.startswith(OWN_CODE):
            return message if record.levelno >= self.threshold else None
        if record.name == "prefect.flow_runs" and message.startswith("View at ") and not self.linked:
            self.linked = True
            return f"Prefect flow run '{getattr(record, 'flow_run_name', '?')}': {message[len('View at ') :]}"
        task = str(getattr(record, "task_name", ""))
        if record.name == "prefect.task_runs" and message.startswith(TASK_STARTED) and task in self.stages:
            phrase = self.stages[task]
            return phrase if isinstance(phrase, str) else phrase(_task_parameters())
        return None

    def hides(self, record: logging.LogRecord) -> bool:
        """True for a record that exists only for this handler (below the run loggers' own level)."""
        return record.name == "prefect.task_runs" and record.levelno < self.threshold


def _task_parameters() -> Mapping[str, Any]:
    """The parameters of the task run whose record is being handled (its start is logged inside its context)."""
    from prefect.context import TaskRunContext

    ctx = TaskRunContext.get()
    return ctx.parameters if ctx is not None else {}


@contextlib.contextmanager
def library_output(stages: Mapping[str, Phrase] | None = None, json_only: bool = False) -> Iterator[None]:
    """Around a flow call: progress lines (see Progress) on the terminal, and whatever libraries print to
    stdout/stderr in the log file (shown as it is with --verbose). With `json_only` (a command's --json) the
    progress lines go to stderr, so stdout holds the one JSON object. Outside the CLI (tests calling a command
    function directly) only the progress lines are added."""
    where = current()
    flow_runs, task_runs = logging.getLogger("prefect.flow_runs"), logging.getLogger("prefect.task_runs")
    level = task_runs.level
    started = where.started if where else time.perf_counter()
    progress = Progress(stages or {}, started, task_runs.getEffectiveLevel(), err=json_only)
    # Everyone else who sees task-run records: Prefect's API handler, and up the tree the log file and terminal.
    others = [h for lg in (task_runs, task_runs.parent, logging.getLogger()) if lg for h in lg.handlers]
    for h in others:
        h.addFilter(_Unless(progress))
    task_runs.setLevel(logging.DEBUG)
    for lg in (flow_runs, task_runs):
        lg.addHandler(progress)
    out, err = _LogStream("stdout"), _LogStream("stderr")
    try:
        with contextlib.ExitStack() as streams:
            if where is not None and not where.verbose:
                streams.enter_context(contextlib.redirect_stdout(out))
                streams.enter_context(contextlib.redirect_stderr(err))
            yield
    finally:
        out.flush()
        err.flush()
        for lg in (flow_runs, task_runs):
            lg.removeHandler(progress)
        task_runs.setLevel(level)
        for h in others:
            h.filters = [f for f in h.filters if not (isinstance(f, _Unless) and f.progress is progress)]


class _Unless(logging.Filter):
    """Drops the records a Progress handler asked for that its handler would not have seen."""

    def __init__(self, progress: Progress):
        super().__init__()
        self.progress = progress

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.progress.hides(record)
