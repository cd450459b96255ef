"""Progress of a search or a command on stderr: rich progress bars."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

err = Console(stderr=True)


class _Count(MofNCompleteColumn):
    """"done/total" for a counted stage; nothing for one of unknown length (a spinner-like stage, not "0/?")."""

    def render(self, task):
        from rich.text import Text

        return Text("") if task.total is None else super().render(task)


class RichReporter:
    """Draws a search's stages and generations as rich progress bars."""

    def __init__(self, progress: Progress, label: str = "KL") -> None:
        self.progress, self.task, self.gen_task, self.label = progress, None, None, label

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


def progress_bars() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), _Count(), TimeElapsedColumn(),
                    TextColumn("{task.fields[best]}"), console=err, transient=False)
