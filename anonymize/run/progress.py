"""What a run reports: as it goes (:class:`Progress`, drawn by the CLI) and at the end (:class:`RunSummary`)."""

from __future__ import annotations

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

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def count_error(self, message: str) -> None:
        """One more error; the first :data:`KEPT_ERROR_MESSAGES` messages are kept."""
        self.errors += 1
        if len(self.error_messages) < KEPT_ERROR_MESSAGES:
            self.error_messages.append(message)


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
