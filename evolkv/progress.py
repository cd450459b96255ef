"""Progress of a search or a command on stderr: rich progress bars on a terminal, plain timestamped lines at a
steady pace where stderr is not one (a batch job, CI, ``nohup``, a pipe), nothing with ``--quiet``."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

err = Console(stderr=True)
LOG_INTERVAL_S = 10.0  # plain lines: at most one a stage's count or a generation this often, and a heartbeat


class _Count(MofNCompleteColumn):
    """"done/total" for a counted stage; nothing for one of unknown length (a spinner-like stage, not "0/?")."""

    def render(self, task):
        from rich.text import Text

        return Text("") if task.total is None else super().render(task)


class RichReporter:
    """Draws a search's stages and generations as rich progress bars."""

    def __init__(self, progress: Progress, label: str = "KL") -> None:
        self.progress, self.task, self.gen_task, self.label = progress, None, None, label

    def new_run(self) -> None:
        """The next search of a ``--budgets`` run: its generations get a bar of their own."""
        self.gen_task = None

    def stage(self, text: str, total: int | None = None) -> None:
        if self.task is not None:
            self.progress.update(self.task, visible=False)
        self.task = self.progress.add_task(text, total=total, best="")

    def advance(self, amount: int = 1) -> None:
        self.progress.advance(self.task, amount)

    def generation(self, gen: int, total: int, best: float, rate: float) -> None:
        if self.gen_task is None:
            if self.task is not None:
                self.progress.update(self.task, visible=False)
            self.gen_task = self.progress.add_task("search", total=total, best="")
        self.progress.update(self.gen_task, completed=gen,
                             best=f"best {self.label} {best:.4f}  {rate:.2f} evals/s")


class LogReporter:
    """Plain lines for logs: each stage as it starts; its count and each generation (best so far, evals/s, ETA)
    at most every ``interval`` seconds, and the last one always; a heartbeat naming the stage when a stage runs
    ``interval`` seconds without a line. Each line starts with the time since the command started."""

    def __init__(self, label: str = "KL", interval: float = LOG_INTERVAL_S, stream=None, clock=time.monotonic) -> None:
        self.label, self.interval, self.stream, self.clock = label, interval, stream or sys.stderr, clock
        self.started = self.last = clock()
        self.text, self.total, self.done = "", None, 0
        self.gen_first: int | None = None
        self.gen_t0 = 0.0
        self.lock = threading.Lock()

    def _print(self, line: str) -> None:
        with self.lock:
            now = self.clock()
            self.last = now
            elapsed = int(now - self.started)
            print(f"[{elapsed // 60:3d}:{elapsed % 60:02d}] {line}", file=self.stream, flush=True)

    def new_run(self) -> None:
        self.gen_first = None

    def stage(self, text: str, total: int | None = None) -> None:
        self.text, self.total, self.done = text, total, 0
        self._print(text + (f" (0/{total})" if total else ""))

    def advance(self, amount: int = 1) -> None:
        self.done += amount
        if self.clock() - self.last >= self.interval or (self.total and self.done >= self.total):
            self._print(f"{self.text} {self.done}/{self.total or '?'}")

    def generation(self, gen: int, total: int, best: float, rate: float) -> None:
        now = self.clock()
        if self.gen_first is None:
            self.gen_first, self.gen_t0 = gen, now
        done = gen - self.gen_first  # generations finished since the first one reported
        self.text, self.total, self.done = "search", None, 0
        if done and gen < total and now - self.last < self.interval:
            return
        eta = ""
        if done:
            left = (now - self.gen_t0) / done * (total - gen)
            eta = f"  ETA {int(left) // 60}m{int(left) % 60:02d}s"
        self._print(f"generation {gen}/{total}  best {self.label} {best:.4f}  {rate:.2f} evals/s{eta}")

    def heartbeat(self) -> None:
        if self.clock() - self.last >= self.interval:
            count = f" {self.done}/{self.total}" if self.total else ""
            self._print(f"{self.text or 'working'}{count}, still running")


class _Silent:
    """``--quiet``: no progress at all."""

    def new_run(self) -> None: ...
    def stage(self, text: str, total: int | None = None) -> None: ...
    def advance(self, amount: int = 1) -> None: ...
    def generation(self, gen: int, total: int, best: float, rate: float) -> None: ...


def progress_bars() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), _Count(), TimeElapsedColumn(),
                    TextColumn("{task.fields[best]}"), console=err, transient=False)


@contextmanager
def reporting(label: str = "KL", quiet: bool = False) -> Iterator:
    """The reporter a command draws its progress with: bars on a terminal, plain lines otherwise, or none."""
    if quiet:
        yield _Silent()
        return
    if err.is_terminal:
        with progress_bars() as progress:
            yield RichReporter(progress, label)
        return
    reporter = LogReporter(label)
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(reporter.interval / 2):
            reporter.heartbeat()

    thread = threading.Thread(target=beat, name="evolkv-progress", daemon=True)
    thread.start()
    try:
        yield reporter
    finally:
        stop.set()
        thread.join(timeout=1.0)
