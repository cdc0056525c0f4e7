"""What a run reports: as it goes (:class:`Progress`, drawn by the CLI) and at the end (:class:`RunSummary`)."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any

KEPT_ERROR_MESSAGES = 50


@dataclass
class RunSummary:
    run_id: str
    images: int = 0  # images processed by this run
    faces: int = 0
    no_face_images: int = 0
    errors: int = 0
    skipped: int = 0  # files met and not processed (not images, hidden, links already walked)
    resumed: int = 0  # images skipped because an earlier run finished them
    seconds: float = 0.0
    output_dir: str = ""
    manifest_path: str | None = None
    dry_run: bool = False
    detector: str | None = None  # the detector that ran (--detector auto resolved)
    error_messages: list[str] = field(default_factory=list)
    stages: dict[str, float] = field(default_factory=dict)  # seconds per image in each stage, method busy share
    privacy_note: str | None = None  # what the output does not protect against, when a person or a machine still recognises it
    error_causes: dict[str, int] = field(default_factory=dict)  # an error's cause (file name left out) -> images
    warnings: int = 0  # images written with a warning (--aligned-lenient's extra faces)
    redone_outputs: int = 0  # images an earlier run finished, redone because their output's bytes had changed
    removed_outputs: int = 0  # outputs of earlier runs removed because their sources are gone from the input

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def count_error(self, message: str, source: str | None = None) -> bool:
        """One more error; the first :data:`KEPT_ERROR_MESSAGES` messages are kept. True when its cause is
        new, so a cause shared by many images (k-Same's ungrouped faces) is printed once, then counted."""
        self.errors += 1
        if len(self.error_messages) < KEPT_ERROR_MESSAGES:
            self.error_messages.append(message)
        cause = error_cause(message, source)
        self.error_causes[cause] = self.error_causes.get(cause, 0) + 1
        return self.error_causes[cause] == 1

    @property
    def clean(self) -> bool:
        """No error row (an image not written: its faces not anonymized): the only run that exits 0
        without --allow-errors."""
        return self.errors == 0

    def repeated_causes(self) -> list[str]:
        """One line per cause that more than one image had, with its count."""
        return [f"{count} images: {cause}" for cause, count in self.error_causes.items() if count > 1]


def error_cause(message: str, source: str | None = None) -> str:
    """An error message without the file it names (``<source>: ``) and its face number: what images share."""
    if source and message.startswith(f"{source}: "):
        message = message[len(source) + 2:]
    return re.sub(r"face #\d+", "face #N", message)


class Progress:
    """What the pipeline reports as it goes; the CLI draws it, tests ignore it."""

    def start(self, total: int, phase: str = "anonymizing") -> None: ...

    def advance(self, faces: int) -> None: ...

    def message(self, text: str) -> None: ...

    def file_done(self, path: str, status: str, faces: int, error: str | None) -> None:
        """One image recorded (its relative path, status, faces found, error): what --dry-run lists per file."""

    def warning(self, text: str) -> None: ...

    def note(self, text: str) -> None:
        """One informational line (which detector runs and why)."""

    def download(self, label: str, done: int, total: int | None) -> None:
        """Progress of a weights download started by the run (``--detector auto``)."""
