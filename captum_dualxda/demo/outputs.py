"""The demo's output directory: refuse files it did not write, record (with SHA-256) the ones it did."""

from __future__ import annotations

import hashlib
import json
import os
from typing import Dict, List

__all__ = ["OUTPUT_MANIFEST", "check_out_dir", "OutputRecord"]

OUTPUT_MANIFEST = ".captum_dualxda_demo.json"
# Files the operating system puts into folders one opens; the demo leaves them alone.
_SYSTEM_FILES = frozenset({".DS_Store", "Thumbs.db", "desktop.ini"})


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _recorded_outputs(directory: str) -> Dict[str, str]:
    """``name -> sha256`` of the files an earlier run recorded in ``directory`` ({} if none)."""
    try:
        with open(os.path.join(directory, OUTPUT_MANIFEST)) as handle:
            recorded = json.load(handle).get("files", {})
    except (OSError, ValueError, AttributeError):
        return {}
    if not isinstance(recorded, dict):
        return {}
    return {str(name): str(digest) for name, digest in recorded.items()}


def check_out_dir(out_dir: str, argument: str = "out_dir") -> List[str]:
    """Check that ``out_dir`` holds nothing but an earlier demo run's outputs; return those.

    The demo writes its figures and ``self_influence.csv`` under fixed names and records each
    file it wrote (with its SHA-256) in ``OUTPUT_MANIFEST``. A directory that is missing or
    empty is fine. Otherwise every entry must be an output recorded there and unchanged since;
    anything else (a file of the user's, even one named like an output, an output the user
    edited, a subfolder, a link) is refused, so the demo never overwrites or deletes it. Files
    the operating system adds (``.DS_Store``, ``Thumbs.db``, ``desktop.ini``) are ignored.

    Parameters
    ----------
    out_dir : str
        The output directory.
    argument : str
        Its name in the error message.

    Returns
    -------
    list of str
        Paths of the earlier run's outputs (and the record), which :func:`run_demo` removes so
        that the directory holds only the new run's files.

    Raises
    ------
    ValueError
        ``out_dir`` holds something the demo did not write; the message lists it.
    """
    directory = os.path.abspath(out_dir)
    if not os.path.isdir(directory):
        return []
    names = sorted(name for name in os.listdir(directory) if name not in _SYSTEM_FILES)
    recorded = _recorded_outputs(directory)
    foreign, changed = [], []
    for name in names:
        path = os.path.join(directory, name)
        plain_file = os.path.isfile(path) and not os.path.islink(path)
        if name == OUTPUT_MANIFEST or (name.startswith(OUTPUT_MANIFEST + ".") and name.endswith(".tmp")):
            if not plain_file:  # the record (or an interrupted write of it) is a plain file
                foreign.append(name)
        elif name not in recorded or not plain_file:
            foreign.append(name)
        elif _sha256(path) != recorded[name]:
            changed.append(name)
    if foreign or changed:

        def listed(items: List[str]) -> str:
            return ", ".join(items[:5]) + (f" and {len(items) - 5} more" if len(items) > 5 else "")

        found = [f"files the demo did not write ({listed(foreign)})"] if foreign else []
        found += [f"outputs changed since the demo wrote them ({listed(changed)})"] if changed else []
        raise ValueError(
            f"`{argument}` = {directory!r} holds {' and '.join(found)}; the demo writes its figures and "
            "self_influence.csv there and never overwrites, deletes or mixes with other files. Pass an "
            "empty or new directory, or move those files."
        )
    return [os.path.join(directory, name) for name in names]


class OutputRecord:
    """Records every file the run writes in ``OUTPUT_MANIFEST`` (rewritten after each file)."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.files: Dict[str, str] = {}  # file name -> SHA-256, as the record holds it
        self.paths: Dict[str, str] = {}  # output name -> absolute path, for DemoResult.files

    def add(self, path: str, name: str) -> None:
        """Record the file at ``path`` (written) under the output name ``name``."""
        self.paths[name] = path
        self.files[os.path.basename(path)] = _sha256(path)
        target = os.path.join(self.directory, OUTPUT_MANIFEST)
        partial = f"{target}.{os.getpid()}.tmp"
        with open(partial, "w") as handle:
            json.dump({"written_by": "python -m captum_dualxda demo", "files": self.files}, handle, indent=1)
        os.replace(partial, target)
