"""How far an image pull or build has got: the Docker engine's events summed up, and the text a
server reports about it (the ``reason`` of a kernel's ``progress`` event) read back.

No I/O here: events and texts in, numbers out. The CLI draws them (``cli/progress.py``); the
image resolver (``images.py``) reports them to a kernel's clients with :func:`pull_report` and
:func:`build_report`, whose shapes :func:`parse_report` reads.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

#: Seconds between two reports of a pull's bytes or of a build step's output (a server logs
#: each and sends it to the kernel's clients).
REPORT_INTERVAL = 1.0
#: The Docker engine's notes between build steps, not a step's own output.
BUILDER_NOTES = (" ---> ", "Removing intermediate container", "Successfully ")
#: A build stream's step header, as the classic builder prints it: "Step 3/9 : RUN make".
_STEP = re.compile(r"Step (\d+)/(\d+) ?: ?(.*)")
#: Pull statuses of one layer whose bytes are all downloaded (or need not be).
_DOWNLOADED = frozenset({"Download complete", "Extracting", "Pull complete"})
#: ... and whose bytes are all in the image.
_EXTRACTED = frozenset({"Pull complete"})
#: A layer the engine already has: nothing to fetch.
_PRESENT = "Already exists"


@dataclass(frozen=True)
class BuildStep:
    """A build step's header: ``number`` of ``count``, running ``instruction``."""

    number: int
    count: int
    instruction: str


def build_step(text: str) -> BuildStep | None:
    """The step a build stream's text starts, or None if it is a step's output."""
    match = _STEP.match(text.strip())
    if match is None:
        return None
    return BuildStep(int(match[1]), int(match[2]), match[3].strip())


@dataclass
class _Layer:
    size: int = 0  # compressed bytes; 0 until the engine says
    downloaded: int = 0
    extracted: int = 0


@dataclass
class PullTally:
    """The bytes of a pull summed over its layers, from ``api.pull(..., decode=True)`` events.

    Each layer counts twice, downloaded then extracted (the engine measures both in the
    layer's compressed bytes), so :attr:`fraction` does not sit at 100% while big layers are
    unpacked. A layer's size is known once it starts downloading, so the total grows while the
    first layers download (the engine fetches three at a time).
    """

    layers: dict[str, _Layer] = field(default_factory=dict)
    present: set[str] = field(default_factory=set)  # layers the engine already had

    def add(self, event: Mapping[str, Any]) -> None:
        layer_id = event.get("id")
        status = str(event.get("status", ""))
        if not layer_id or not status or status.startswith("Pulling from"):
            return  # the pull's own lines ("Digest: ...", "Status: ..."), not a layer's
        if status == _PRESENT:
            self.present.add(str(layer_id))
            return
        layer = self.layers.setdefault(str(layer_id), _Layer())
        detail = event.get("progressDetail") or {}
        current, total = detail.get("current"), detail.get("total")
        if isinstance(total, int) and total > 0:
            layer.size = max(layer.size, total)
        if status == "Downloading" and isinstance(current, int):
            layer.downloaded = current
        elif status == "Extracting" and isinstance(current, int):
            layer.downloaded, layer.extracted = layer.size, current
        if status in _DOWNLOADED:
            layer.downloaded = max(layer.downloaded, layer.size)
        if status in _EXTRACTED:
            layer.extracted = layer.size

    @property
    def size(self) -> int:
        """Compressed bytes of the layers to fetch (those whose size is known yet)."""
        return sum(layer.size for layer in self.layers.values())

    @property
    def downloaded(self) -> int:
        return sum(min(layer.downloaded, layer.size) for layer in self.layers.values())

    @property
    def finished(self) -> int:
        """Layers in the image (pulled now, or there before)."""
        done = sum(
            1 for layer in self.layers.values() if layer.size and layer.extracted >= layer.size
        )
        return done + len(self.present)

    @property
    def count(self) -> int:
        """Layers of the image (so far seen)."""
        return len(self.layers) + len(self.present)

    @property
    def fraction(self) -> float | None:
        """How much of the pull is done, 0..1; None while no layer's size is known."""
        size = self.size
        if not size:
            return None
        extracted = sum(min(layer.extracted, layer.size) for layer in self.layers.values())
        return (self.downloaded + extracted) / (2 * size)


def pull_totals(events: Iterable[Mapping[str, Any]]) -> PullTally:
    """The tally of a list of pull events (a recorded pull, in tests)."""
    tally = PullTally()
    for event in events:
        tally.add(event)
    return tally


# -- the text of a server's progress reports ------------------------------------------------------
_PULL_REPORT = re.compile(r"pulling (?P<image>\S+): (?P<percent>\d+)% of (?P<mb>\d+) MB$")
_BUILD_REPORT = re.compile(r"building (?P<tag>\S+): (?P<text>.*)$")


def pull_report(image: str, tally: PullTally) -> str:
    """ "pulling IMAGE: 42% of 120 MB"."""
    return f"pulling {image}: {int(100 * (tally.fraction or 0))}% of {tally.size / 1e6:.0f} MB"


def build_report(tag: str, text: str) -> str:
    """ "building TAG: Step 3/9 : RUN make" for a step, "building TAG: LINE" for its output."""
    return f"building {tag}: {text.strip()}"


@dataclass(frozen=True)
class Report:
    """A progress report read back: a pull's ``fraction``, or a build's ``step`` or output
    ``line`` (of the step last reported); ``subject`` is the image; neither for other text."""

    text: str
    subject: str = ""
    fraction: float | None = None
    step: BuildStep | None = None
    line: str = ""

    @property
    def pull(self) -> bool:
        return self.fraction is not None

    @property
    def build(self) -> bool:
        return self.step is not None or bool(self.line)


def parse_report(text: str) -> Report:
    """What a progress event's text says (see :func:`pull_report`, :func:`build_report`)."""
    pulled = _PULL_REPORT.match(text)
    if pulled is not None:
        return Report(text, pulled["image"], fraction=min(1.0, int(pulled["percent"]) / 100))
    built = _BUILD_REPORT.match(text)
    if built is not None:
        step = build_step(built["text"])
        return Report(text, built["tag"], step=step, line="" if step else built["text"])
    return Report(text)


__all__ = [
    "BUILDER_NOTES",
    "REPORT_INTERVAL",
    "BuildStep",
    "PullTally",
    "Report",
    "build_report",
    "build_step",
    "parse_report",
    "pull_report",
    "pull_totals",
]
