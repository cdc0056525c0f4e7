"""TensorFlow.js itself, run by Node on its CPU backend: the reference the PyTorch TF.js graph reader is checked against.

The reference is the pinned ``@tensorflow/tfjs`` under ``tests/tfjs_reference`` (``make tfjs-reference``
installs it; ``make install`` does so too). Every call starts a fresh ``node run_graph.js`` process,
which is slow-ish (about a second) but leaves no state between tests. The request protocol is
described at the top of ``run_graph.js``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pytest

REFERENCE_DIR = Path(__file__).parent / "tfjs_reference"
SCRIPT = REFERENCE_DIR / "run_graph.js"
INSTALL_HINT = "run `make tfjs-reference`"
DTYPES = {"float32": np.dtype("<f4"), "int32": np.dtype("<i4"), "bool": np.dtype("u1")}


def reference_available() -> str | None:
    """None when node and the pinned @tensorflow/tfjs are installed, else why not, in one line."""
    if shutil.which("node") is None:
        return f"node is not installed: the TF.js reference needs Node.js >= 18 and npm, then {INSTALL_HINT}"
    pinned = json.loads((REFERENCE_DIR / "package.json").read_text())["dependencies"]["@tensorflow/tfjs"]
    installed = REFERENCE_DIR / "node_modules" / "@tensorflow" / "tfjs" / "package.json"
    if not installed.is_file():
        return f"the TF.js reference is not installed: {INSTALL_HINT}"
    version = json.loads(installed.read_text())["version"]
    if version != pinned:
        return f"the TF.js reference holds @tensorflow/tfjs {version}, not the pinned {pinned}: {INSTALL_HINT}"
    return None


def require_reference() -> None:
    """Skip the calling test without the reference; in CI fail instead, so a broken install is never a green run."""
    reason = reference_available()
    if reason is None:
        return
    if os.environ.get("CI"):
        pytest.fail(f"TF.js reference unavailable in CI: {reason}", pytrace=False)
    pytest.skip(reason)


def _wire_dtype(array: np.ndarray) -> str:
    """TF.js graph inputs are float32 or int32: wider floats and ints are narrowed, as TF.js would hold them."""
    if np.issubdtype(array.dtype, np.floating):
        return "float32"
    if np.issubdtype(array.dtype, np.integer):
        return "int32"
    raise TypeError(f"TF.js reference inputs are float or integer arrays, not {array.dtype}")


def run_reference(model_json: Path, inputs: Mapping[str, np.ndarray], outputs: Sequence[str],
                  timeout: float = 300) -> dict[str, np.ndarray]:
    """Run the graph model at ``model_json`` in TF.js on ``inputs`` (by node name) and return ``outputs`` by name.

    Names are graph node names, with or without ``:<index>``. Raises RuntimeError with node's stderr when
    TF.js fails (an unknown node, a wrong shape, an op it lacks) or runs past ``timeout`` seconds.
    """
    outputs = list(outputs)
    with tempfile.TemporaryDirectory(prefix="tfjs-reference-") as tmp:
        work = Path(tmp)
        request: dict = {"inputs": {}, "outputs": outputs, "out_dir": str(work / "out")}
        for index, (name, value) in enumerate(inputs.items()):
            array = np.asarray(value)
            dtype = _wire_dtype(array)
            path = work / f"in{index}.bin"
            np.ascontiguousarray(array, dtype=DTYPES[dtype]).tofile(path)
            request["inputs"][name] = {"shape": list(array.shape), "dtype": dtype, "file": str(path)}
        (work / "request.json").write_text(json.dumps(request))
        command = ["node", str(SCRIPT), str(Path(model_json).resolve()), str(work / "request.json")]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as error:
            stderr = error.stderr.decode(errors="replace") if isinstance(error.stderr, bytes) else error.stderr or ""
            raise RuntimeError(f"TF.js reference on {model_json} ran past {timeout} s:\n{stderr.strip()}") from error
        if done.returncode != 0:
            raise RuntimeError(f"TF.js reference on {model_json} failed (exit {done.returncode}):\n{done.stderr.strip()}")
        written = json.loads((work / "out" / "outputs.json").read_text())["outputs"]
        results = {}
        for name, entry in zip(outputs, written):
            array = np.fromfile(work / "out" / entry["file"], dtype=DTYPES[entry["dtype"]]).reshape(entry["shape"])
            results[name] = array.astype(bool) if entry["dtype"] == "bool" else array
        return results
