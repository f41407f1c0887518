"""Image pulls and builds drawn on stderr: a progress bar on a terminal, plain lines elsewhere
(and ``stigmer cp``'s copies: a bar on a terminal, nothing elsewhere).

:class:`ProgressDisplay` takes three kinds of input: the Docker engine's pull and build events
(``stigmer sandbox pull|build``, which talk to the engine themselves) and the text of a
server's ``progress`` events (``stigmer run`` while the server prepares a sandbox's image; the
shapes are those of ``provisioners/progress.py``). On a terminal it draws one bar per image
with rich, imported the first time a bar is drawn, so that ``import stigmer_kernel.cli.main``
and a command that prepares no image never load it. Anywhere else (a file, a pipe, CI, or
``TERM=dumb``) it writes the plain lines it always wrote, without escape sequences.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from typing import Any, TextIO

from ..provisioners.progress import BUILDER_NOTES, PullTally, Report, build_step, parse_report

#: Units of a pull's bar (its fraction times this): fine enough for any terminal width.
_PULL_UNITS = 1000


def draws_bars(stream: TextIO) -> bool:
    """Whether progress on ``stream`` is drawn as bars: a terminal that moves its cursor."""
    try:
        tty = stream.isatty()
    except (AttributeError, ValueError):  # closed, or not a real file
        return False
    return tty and os.environ.get("TERM", "") != "dumb"


class ProgressDisplay:
    """Progress of the pulls and builds of one CLI command; :meth:`close` it (or use ``with``)
    before anything else is written to the terminal."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.bars = draws_bars(self.stream)
        self._bar: _Bars | None = None  # drawn at the first pull or build update
        self._pulls: dict[str, PullTally] = {}
        self._said: dict[str, int] = {}  # image -> tenth of its pull last said in plain text

    def __enter__(self) -> ProgressDisplay:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Take the bars off the terminal (what was said above them stays)."""
        if self._bar is not None:
            self._bar.stop()
            self._bar = None

    # -- inputs ---------------------------------------------------------------------------------
    def say(self, text: str) -> None:
        """A line of its own: above the bars, or plain."""
        if self._bar is not None:
            self._bar.say(f"stigmer: {text}")
        else:
            print(f"stigmer: {text}", file=self.stream, flush=True)

    def pull_event(self, image: str, event: Mapping[str, Any]) -> None:
        """One event of the engine's pull stream (``api.pull(..., stream=True, decode=True)``)."""
        tally = self._pulls.setdefault(image, PullTally())
        tally.add(event)
        if not self.bars:
            status = event.get("status", "")
            if status and not event.get("progressDetail"):
                self.say(f"{event.get('id', '')} {status}".strip())
            return
        fraction = tally.fraction
        if fraction is None:
            return
        amount = f"{tally.downloaded / 1e6:.0f}/{tally.size / 1e6:.0f} MB"
        amount += f", {tally.finished}/{tally.count} layers"
        self._bars().update(f"pulling {image}", fraction, amount, "")

    def build_event(self, tag: str, event: Mapping[str, Any]) -> None:
        """One event of the engine's build stream (``api.build(..., decode=True)``)."""
        text = str(event.get("stream", ""))
        if not self.bars:
            if text:  # as the engine wrote it (a step's header and its newline come apart)
                self.stream.write(text)
                self.stream.flush()
            return
        if not text.strip():
            return
        step = build_step(text)
        if step is not None:
            self._bars().step(f"building {tag}", step.number, step.count, step.instruction)
        elif not text.startswith(BUILDER_NOTES):
            self._bars().line(f"building {tag}", text.strip().splitlines()[-1])

    def report(self, text: str) -> None:
        """The text of a server's progress event about a sandbox's image."""
        said = parse_report(text)
        if not self.bars:
            if not said.pull or self._new_tenth(said):
                self.say(text)
            return
        name = f"{'pulling' if said.pull else 'building'} {said.subject}"
        if said.fraction is not None:
            self._bars().update(name, said.fraction, text.rsplit(": ", 1)[-1], "")
        elif said.step is not None:
            self._bars().step(name, said.step.number, said.step.count, said.step.instruction)
        elif said.line:
            self._bars().line(name, said.line)
        else:
            self.say(text)

    def transfer(self, name: str, done: int, total: int) -> None:
        """A copy's progress (``stigmer cp``): a bar on a terminal, nothing elsewhere."""
        if not self.bars or total <= 0:
            return
        amount = f"{done / 1e6:.0f}/{total / 1e6:.0f} MB"
        self._bars().update(name, min(1.0, done / total), amount, "")

    # -- helpers --------------------------------------------------------------------------------
    def _new_tenth(self, said: Report) -> bool:
        """Plain text says a pull's progress each 10%, not each second."""
        tenth = int(10 * (said.fraction or 0))
        if self._said.get(said.subject) == tenth:
            return False
        self._said[said.subject] = tenth
        return True

    def _bars(self) -> _Bars:
        if self._bar is None:
            self._bar = _Bars(self.stream)
        return self._bar


class _Bars:
    """The rich side: one row per image, its bar, what it is at, and its latest line."""

    def __init__(self, stream: TextIO) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            Progress,
            SpinnerColumn,
            TextColumn,
            TimeElapsedColumn,
        )
        from rich.table import Column

        self.progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}", markup=False),
            BarColumn(bar_width=24),
            TextColumn("{task.fields[amount]}", markup=False),
            TimeElapsedColumn(),
            TextColumn(
                "{task.fields[line]}",
                style="dim",
                markup=False,
                table_column=Column(no_wrap=True, overflow="ellipsis", ratio=1),
            ),
            console=Console(file=stream, highlight=False),
            transient=True,
            redirect_stdout=False,  # the command's output is not ours to hold
            expand=True,
        )
        self.tasks: dict[str, Any] = {}
        self.progress.start()

    def _task(self, name: str, total: float) -> Any:
        task = self.tasks.get(name)
        if task is None:
            for other in self.tasks.values():  # a new image: the others are done
                self.progress.update(other, completed=self.progress.tasks[other].total)
            task = self.tasks[name] = self.progress.add_task(name, total=total, amount="", line="")
        return task

    def update(self, name: str, fraction: float, amount: str, line: str) -> None:
        task = self._task(name, _PULL_UNITS)
        completed = round(fraction * _PULL_UNITS)
        self.progress.update(task, completed=completed, amount=amount, line=line)

    def step(self, name: str, number: int, count: int, instruction: str) -> None:
        task = self._task(name, count)
        amount = f"step {number}/{count}"
        self.progress.update(
            task, total=count, completed=number - 1, amount=amount, line=instruction
        )

    def line(self, name: str, text: str) -> None:
        if name in self.tasks:
            self.progress.update(self.tasks[name], line=text)

    def say(self, text: str) -> None:
        self.progress.console.print(text, markup=False)

    def stop(self) -> None:
        self.progress.stop()


__all__ = ["ProgressDisplay", "draws_bars"]
