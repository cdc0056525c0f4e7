"""The output folder's guarantees: never touching the input, owning the folder, resuming only what matches.

Before the first output is written the folder is checked (ours, or empty, or --overwrite), locked
for the whole run, and marked with the settings that decide the output pixels; a later run into
it must have the same settings (or --overwrite), so a resume never mixes two kinds of output.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from anonymize.errors import RunError
from anonymize.io.manifest import (MANIFEST_NAME, STATUS_SKIPPED, WORK_DIR_NAME, earlier_rows_unmerged, input_key,
                                   manifest_inputs, read_manifest, readable, recover_previous_rows, row_identity)
from anonymize.io.outdir import (OutputFolderBusy, OutputLock, StoreLock, acquire_lock, probe_lock, read_marker,
                                 probe_writable, remove_stale_temporaries, write_marker)
from anonymize.io.storage import PLANS_DIR_NAME
from anonymize.io.store import Location, StorePath, bucket_missing, is_within, uses_store
from anonymize.io.write import is_regular_file_in, open_folder_in, output_path_for
from anonymize.run.prepare import PreviousRows, file_sha256



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


@dataclass
class Sweep:
    """What removing the outputs of gone sources did."""

    removed: int = 0  # outputs removed
    sources: set[bytes] = field(default_factory=set)  # exact names of the gone sources: their rows leave the manifest
    kept: list[str] = field(default_factory=list)  # outputs of gone sources left in place (changed since written)


def _source_gone(input_dir: Location, relpath: PurePosixPath) -> bool:
    """Whether ``relpath`` surely no longer exists under ``input_dir`` (an error other than "no such
    file", such as a folder that cannot be searched, is not proof: the source is kept)."""
    try:
        path = output_path_for(input_dir, relpath)
    except ValueError:
        return False
    if isinstance(path, StorePath):
        try:
            return not path.exists()
        except OSError:
            return False
    try:
        os.lstat(path)
        return False
    except OSError as exc:
        return exc.errno in (errno.ENOENT, errno.ENOTDIR)


def _remove_empty_folders(root: Path, parts: tuple[str, ...]) -> None:
    """Remove the folders ``root/parts...`` from the deepest up, as long as they are empty (never ``root``)."""
    for depth in range(len(parts), 0, -1):
        try:
            folder = open_folder_in(root, parts[: depth - 1], create=False)
        except OSError:
            return
        try:
            os.rmdir(parts[depth - 1], dir_fd=folder)
        except OSError:
            return
        finally:
            os.close(folder)


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
        self.earlier_rows: list[dict[str, Any]] = []  # every row of earlier runs, skipped ones too (previous_rows)
        self.earlier_inputs: list[str] = []  # the input folders of those runs (anonymize.io.manifest.recorded_inputs)
        self.sweep = Sweep()  # outputs of earlier runs whose sources are gone (--overwrite: swept in take)

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

    def take(self, settings: dict[str, Any], overwrite: bool, input_dir: Location | None = None) -> None:
        """Lock the folder, forget earlier runs if asked, mark the folder: all before the first output.

        With --overwrite and ``input_dir``, the outputs of earlier runs whose sources are gone from
        ``input_dir`` are removed first (:meth:`sweep_gone_sources`), while the manifest still says
        which files those runs wrote."""
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
                if input_dir is not None:
                    self.sweep_gone_sources(input_dir, *earlier_rows_unmerged(self.path, self.manifest_path))
                self._forget_previous_runs()
            write_marker(out, settings)  # also proves the folder writable before any image is done
        except RunError:  # an output of a gone source that cannot be removed: its own line
            self.release()
            raise
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
        self.earlier_rows = rows
        self.earlier_inputs = manifest_inputs(self.manifest_path) if rows else []
        grouped: dict[str, PreviousRows] = {}
        for row in rows:
            if not isinstance(row.get("status"), str) or not isinstance(row.get("source_path"), str):
                raise RunError(self._unreadable_manifest())  # Parquet, but not a manifest
            if row["status"] != STATUS_SKIPPED:
                grouped.setdefault(row["source_path"], []).append(row)
        return grouped

    def sweep_gone_sources(self, input_dir: Location, rows: Iterable[dict[str, Any]] | None = None,
                           inputs: list[str] | None = None) -> Sweep:
        """Remove the outputs of earlier runs whose sources no longer exist in ``input_dir``; their rows
        are left out of the next merge (``self.sweep.sources``). Only a file the manifest says a run
        wrote, still a regular file reached without links, and (when its row recorded a hash) still
        holding the bytes written, is removed; never anything else. Nothing is swept when the input
        is one image, or when the manifest's rows do not all come from runs over this same input
        folder (another input's sources are not "gone" from this one)."""
        rows = self.earlier_rows if rows is None else rows
        inputs = self.earlier_inputs if inputs is None else inputs
        sweep = self.sweep
        try:
            if not input_dir.is_dir() or inputs != [input_key(input_dir)]:
                return sweep
        except OSError:
            return sweep
        by_source: dict[bytes, list[dict[str, Any]]] = {}
        for row in rows:
            by_source.setdefault(row_identity(row)[0], []).append(row)
        for name, source_rows in by_source.items():
            relpath = PurePosixPath(os.fsdecode(name))
            if not _source_gone(input_dir, relpath):
                continue
            sweep.sources.add(name)
            outputs: dict[str, str | None] = {}
            for row in source_rows:
                if row.get("output_path"):
                    outputs[row["output_path"]] = outputs.get(row["output_path"]) or row.get("output_sha256")
            for output, recorded in outputs.items():
                if self._remove_output(PurePosixPath(output), recorded):
                    sweep.removed += 1
        return sweep

    def _remove_output(self, relpath: PurePosixPath, recorded: str | None) -> bool:
        """Remove one output of a gone source if it is still the file a run wrote there; True if removed."""
        out = self.path
        if relpath.parts[:1] == (WORK_DIR_NAME,) or relpath == PurePosixPath(MANIFEST_NAME):
            return False  # the run's own files are never an output
        try:
            path = output_path_for(out, relpath)
        except ValueError:
            return False
        if path == self.manifest_path or not is_regular_file_in(out, path):
            return False  # already gone, or a link or folder now: not ours
        if recorded is not None and file_sha256(path) != recorded:
            self.sweep.kept.append(readable(str(relpath)))
            self.warn(f"{readable(str(relpath))}: its source is gone, but the file is no longer the one anonymize wrote; left in place")
            return False
        try:
            if isinstance(path, StorePath):
                path.unlink(missing_ok=True)
                return True
            folder = open_folder_in(Path(out), relpath.parts[:-1], create=False)
            try:
                os.unlink(relpath.parts[-1], dir_fd=folder)
            finally:
                os.close(folder)
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise RunError(f"{out}: cannot remove {readable(str(relpath))}, whose source is gone ({exc.strerror or exc})") from None
        _remove_empty_folders(Path(out), relpath.parts[:-1])
        return True

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
