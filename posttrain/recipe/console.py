"""What the runner says while it works: rich lines on a terminal, plain lines otherwise (logs, CI)."""
from __future__ import annotations

import sys
from typing import TextIO


class RunConsole:
    """Stage start / skip / done / failure lines, with durations."""

    def __init__(self, stream: TextIO | None = None, rich: bool | None = None):
        self.stream = stream or sys.stdout
        use_rich = self.stream.isatty() if rich is None else rich
        self._rich = None
        if use_rich:
            from rich.console import Console  # only on a terminal: plain output needs no rich

            self._rich = Console(file=self.stream, highlight=False)

    def _esc(self, text: str) -> str:
        """Text from outside (labels, error messages) may hold '[...]', which rich would read as markup."""
        from rich.markup import escape

        return escape(text) if self._rich is not None else text

    def _say(self, plain: str, styled: str) -> None:
        if self._rich is not None:
            self._rich.print(styled)
        else:
            print(plain, file=self.stream, flush=True)

    def run_start(self, name: str, run_dir: str, n_stages: int) -> None:
        self._say(f"run {name}: {n_stages} stages in {run_dir}", f"[bold]run {name}[/]: {n_stages} stages in {run_dir}")

    def stage_start(self, label: str, kind: str, resuming: bool) -> None:
        note = " (resuming a cut-off attempt)" if resuming else ""
        self._say(f"stage {label} ({kind}): start{note}", f"[cyan]>[/] [bold]{label}[/] ({kind}){note}")

    def stage_skip(self, label: str, kind: str) -> None:
        self._say(f"stage {label} ({kind}): cached, skipped", f"[dim]= {label} ({kind}) cached, skipped[/]")

    def stage_done(self, label: str, kind: str, seconds: float) -> None:
        self._say(f"stage {label} ({kind}): done in {seconds:.1f}s", f"[green]✓[/] [bold]{label}[/] ({kind}) done in {seconds:.1f}s")

    def stage_failed(self, label: str, kind: str, error: BaseException) -> None:
        self._say(f"stage {label} ({kind}): FAILED: {error}", f"[red]✗ {self._esc(label)}[/] ({kind}) failed: {self._esc(str(error))}")

    def info(self, message: str) -> None:
        self._say(message, self._esc(message))
