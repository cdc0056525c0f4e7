"""The output folder's guarantees: never touching the input, owning the folder, resuming only what matches.

Before the first output is written the folder is checked (ours, or empty, or --overwrite), locked
for the whole run, and marked with the settings that decide the output pixels; a later run into
it must have the same settings (or --overwrite), so a resume never mixes two kinds of output.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from typing import Any

from anonymize.errors import RunError
from anonymize.io.manifest import MANIFEST_NAME, STATUS_SKIPPED, WORK_DIR_NAME, read_manifest, recover_previous_rows
from anonymize.io.outdir import (OutputFolderBusy, OutputLock, StoreLock, acquire_lock, probe_lock, read_marker,
                                 probe_writable, remove_stale_temporaries, write_marker)
from anonymize.io.storage import PLANS_DIR_NAME
from anonymize.io.store import Location, StorePath, bucket_missing, is_within, uses_store
from anonymize.run.prepare import PreviousRows



def check_paths(input_dir: Location, output_dir: Location, manifest_path: Location | None = None) -> None:
    """Refuse any layout in which writing the output (or the manifest) could touch the input."""
    if uses_store(input_dir, output_dir, manifest_path):
        try:
            _check_store_paths(input_dir, output_dir, manifest_path)
        except OSError as exc:  # the store itself failed (unreachable, no credentials): one line
            raise RunError(str(exc)) from None
        return
    if not input_dir.exists():
        raise RunError(f"{input_dir}: input folder does not exist")
    if input_dir.is_file():  # one image: written as <out>/<its name>, so <out> must not be the folder holding it
        _check_file_paths(input_dir, output_dir, manifest_path)
        return
    if not input_dir.is_dir():
        raise RunError(f"{input_dir}: input is not a folder")
    source, target = input_dir.resolve(), output_dir.resolve()
    if target == source:
        raise RunError(f"{output_dir}: the output folder must differ from the input folder")
    if source in target.parents:
        raise RunError(f"{output_dir}: the output folder is inside the input folder {input_dir}; choose a folder outside it")
    if target in source.parents:
        raise RunError(f"{output_dir}: the output folder contains the input folder {input_dir}; choose a folder beside it")
    if manifest_path is not None:
        manifest = manifest_path.resolve()
        if manifest == source or source in manifest.parents:
            raise RunError(f"{manifest_path}: the manifest path is inside the input folder {input_dir}; choose a path outside it")
        if manifest.is_dir():
            raise RunError(f"{manifest_path}: the manifest path is a folder; give a file path such as {manifest_path / MANIFEST_NAME}")


def _check_file_paths(image: Path, output_dir: Path, manifest_path: Path | None) -> None:
    """:func:`check_paths` for one input image: its output (<out>/<name>) and the manifest must not be the image."""
    source, target = image.resolve(), output_dir.resolve()
    if target == source:
        raise RunError(f"{output_dir}: --out must be a folder, not the input image")
    if target == source.parent:
        raise RunError(f"{output_dir}: the output folder is the one holding the input image {image}; its output "
                       f"would replace it: choose another folder")
    if manifest_path is not None:
        if manifest_path.resolve() == source:
            raise RunError(f"{manifest_path}: the manifest path is the input image; choose another path")
        if manifest_path.is_dir():
            raise RunError(f"{manifest_path}: the manifest path is a folder; give a file path such as {manifest_path / MANIFEST_NAME}")


def _check_store_paths(input_dir: Location, output_dir: Location, manifest_path: Location | None) -> None:
    """:func:`check_paths` when a location is a URI: the same refusals, comparing normalised store,
    endpoint, bucket and path components (a ``file://`` URI and a local path of one folder are equal)."""
    for where, role in ((input_dir, "input"), (output_dir, "output")):
        bucket = bucket_missing(where) if isinstance(where, StorePath) else None
        if bucket is not None:
            raise RunError(f"{where}: the {role} bucket {bucket!r} does not exist (or these credentials cannot see it)")
    if not input_dir.exists():
        raise RunError(f"{input_dir}: input folder does not exist")
    if not input_dir.is_dir():
        raise RunError(f"{input_dir}: input is not a folder")
    if is_within(output_dir, input_dir):
        inside = is_within(input_dir, output_dir)
        raise RunError(f"{output_dir}: the output folder must differ from the input folder" if inside else
                       f"{output_dir}: the output folder is inside the input folder {input_dir}; choose a folder outside it")
    if is_within(input_dir, output_dir):
        raise RunError(f"{output_dir}: the output folder contains the input folder {input_dir}; choose a folder beside it")
    if manifest_path is not None:
        if is_within(manifest_path, input_dir):
            raise RunError(f"{manifest_path}: the manifest path is inside the input folder {input_dir}; choose a path outside it")
        if manifest_path.is_dir():
            raise RunError(f"{manifest_path}: the manifest path is a folder; give a file path such as {manifest_path / MANIFEST_NAME}")


def default_output_dir(input_dir: Location) -> Location:
    if isinstance(input_dir, StorePath):
        try:
            return input_dir.with_root_suffix("-anonymized")
        except ValueError as exc:
            raise RunError(str(exc)) from None
    resolved = input_dir.resolve()
    return resolved.parent / f"{resolved.name}-anonymized"


def _without_unused_margin(earlier: dict[str, Any], ours: dict[str, Any]) -> dict[str, Any]:
    """Folders written before --margin became an option of the methods that use it recorded
    ``margin: 0.0`` for every method; for a method without that option it decided nothing."""
    options = earlier.get("method_options")
    if isinstance(options, dict) and options.get("margin") == 0.0 and "margin" not in ours.get("method_options", {}):
        return {**earlier, "method_options": {key: value for key, value in options.items() if key != "margin"}}
    return earlier


class OutputFolder:
    """One run's hold on its output folder: checked, then locked and marked, then released."""

    def __init__(self, output_dir: Location, manifest_path: Location | None, warn: Callable[[str], None]) -> None:
        self.path = output_dir
        self.manifest_path = manifest_path or output_dir / MANIFEST_NAME
        self.warn = warn
        self.lock: OutputLock | StoreLock | None = None  # held from before the first write to the end of the run

    def check(self, overwrite: bool) -> None:
        """Ours, empty or absent (or --overwrite), and not held by another run."""
        out = self.path
        if not out.exists():
            return
        if not out.is_dir():
            raise RunError(f"{out}: output path exists and is not a folder")
        ours = self.manifest_path.exists() or (out / WORK_DIR_NAME).exists()
        if not ours and any(out.iterdir()) and not overwrite:
            raise RunError(f"{out}: output folder is not empty and holds no anonymize manifest; pass --overwrite to write into it")
        try:
            probe_lock(out)
        except OutputFolderBusy as exc:
            raise RunError(str(exc)) from None

    def earlier_settings(self) -> dict[str, Any] | None:
        """The settings of the runs already in the folder (None: no earlier run)."""
        marker = read_marker(self.path)
        if marker is not None and isinstance(marker.get("settings"), dict):
            return marker["settings"]
        if not self.manifest_path.is_file():
            return None
        try:
            metadata = read_manifest(self.manifest_path)[1]
            if "settings" in metadata:
                return json.loads(metadata["settings"])
            # A manifest from before settings were recorded: compare what it holds.
            return {"method": json.loads(metadata["arguments"])["method"]}
        except Exception:  # noqa: BLE001 - unreadable: nothing to compare, the resume check will redo images
            return None

    def check_same_settings(self, settings: dict[str, Any]) -> None:
        """An earlier run with other settings: one line saying which, before anything is written."""
        if not self.path.is_dir():
            return
        earlier = self.earlier_settings()
        if earlier is None:
            return
        earlier = _without_unused_margin(earlier, settings)
        changed = [f"{key} {earlier[key]} -> {settings.get(key)}" for key in sorted(earlier) if earlier[key] != settings.get(key)]
        if changed:
            raise RunError(
                f"{self.path}: the earlier run into this folder used other settings ({'; '.join(changed)}); "
                f"pass --overwrite to redo every image with the new ones, or choose another --out"
            )

    def take(self, settings: dict[str, Any], overwrite: bool) -> None:
        """Lock the folder, forget earlier runs if asked, mark the folder: all before the first output."""
        out = self.path
        stale: list[str] = []

        def took_over(message: str) -> None:
            stale.append(message)
            self.warn(message)

        try:
            self.lock = acquire_lock(out, on_stale=took_over)
            if stale:  # the previous run was killed: its temporary files are garbage
                remove_stale_temporaries(out)
        except OutputFolderBusy as exc:
            raise RunError(str(exc)) from None
        except OSError as exc:
            raise RunError(f"{out}: cannot write into the output folder ({exc.strerror or exc})") from None
        try:
            if overwrite:
                self._forget_previous_runs()
            write_marker(out, settings)  # also proves the folder writable before any image is done
        except OSError as exc:
            self.release()
            raise RunError(f"{out}: cannot write into the output folder ({exc.strerror or exc})") from None
        try:
            probe_writable(self.manifest_path, out)  # and the manifest's place: a --manifest elsewhere too
        except OSError as exc:
            self.release()
            raise RunError(f"{self.manifest_path}: cannot write the manifest there ({exc.strerror or exc}); nothing was processed") from None

    def release(self) -> None:
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def previous_rows(self) -> dict[str, PreviousRows]:
        """Rows of earlier runs by source path (parts a killed run left merged in first); skipped rows aside."""
        try:
            rows = recover_previous_rows(self.path, self.manifest_path)
        except OSError as exc:
            raise RunError(f"{self.manifest_path}: cannot merge the earlier manifest ({exc.strerror or exc})") from None
        except (ValueError, KeyError, TypeError):  # pyarrow's ArrowInvalid is a ValueError: not Parquet, or cut short
            raise RunError(self._unreadable_manifest()) from None
        grouped: dict[str, PreviousRows] = {}
        for row in rows:
            if not isinstance(row.get("status"), str) or not isinstance(row.get("source_path"), str):
                raise RunError(self._unreadable_manifest())  # Parquet, but not a manifest
            if row["status"] != STATUS_SKIPPED:
                grouped.setdefault(row["source_path"], []).append(row)
        return grouped

    def _unreadable_manifest(self) -> str:
        return (f"{self.manifest_path}: corrupt or not an anonymize manifest, so the earlier run cannot be resumed; "
                f"pass --overwrite to redo every image (or move the file away)")

    def _forget_previous_runs(self) -> None:
        """--overwrite: drop the manifest and the parts (never following links); outputs are rewritten in place."""
        if self.manifest_path.is_symlink() or self.manifest_path.exists():
            self.manifest_path.unlink()
        for name in ("parts", PLANS_DIR_NAME):  # every first-pass participant plans again from scratch
            folder = self.path / WORK_DIR_NAME / name
            if folder.is_symlink():
                folder.unlink()
            elif isinstance(folder, StorePath):
                folder.remove_tree()
            elif folder.exists():
                shutil.rmtree(folder)
