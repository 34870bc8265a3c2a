"""Version folders: ``<base>/<model_name>/<version>/`` with numeric versions, the layout TF Serving's file-system
source polls (it lists the children of the base path and keeps the names that parse as int64; anything else is
ignored, such as the hidden staging folders of `mdcns_tf.savedmodel.publish`)."""

from __future__ import annotations

import errno
import os
import re
import tempfile

from mdcns_tf.config import is_safe_model_name
from mdcns_tf.savedmodel.signatures import SAVED_MODEL_FILE


def serving_versions(model_dir: str) -> list[int]:
    """The version numbers TF Serving would see in ``model_dir``: children whose names are integers."""
    if not os.path.isdir(model_dir):
        return []
    return sorted(int(name) for name in os.listdir(model_dir) if re.fullmatch(r"\d+", name))


def next_version(model_dir: str) -> int:
    """1 + the largest numeric version folder in ``model_dir`` (1 for a new model)."""
    return max(serving_versions(model_dir), default=0) + 1


def newest_version(path: str) -> str:
    """``path`` when it is one version folder, else the newest numeric version folder of the model folder ``path``.

    Raises `FileNotFoundError` when ``path`` does not exist, is a file, holds no version, or when the version is
    not a SavedModel (an empty or unfinished version folder, which TF Serving would fail to load as well).
    """
    if os.path.exists(os.path.join(path, SAVED_MODEL_FILE)):
        return path
    if not os.path.exists(path):
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), path)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{path!r} is a file, not a model folder (<model>/<version>/) or a version folder")
    versions = serving_versions(path)
    version = path if re.fullmatch(r"\d+", os.path.basename(os.path.normpath(path))) and not versions else None
    if not versions and version is None:
        raise FileNotFoundError(f"no numeric version folder in {path!r}")
    version = version or os.path.join(path, str(versions[-1]))
    if not os.path.exists(os.path.join(version, SAVED_MODEL_FILE)):
        raise FileNotFoundError(
            f"{version} has no {SAVED_MODEL_FILE}: an empty or unfinished version, which TF Serving would fail to "
            f"load too; remove it, or name the version to use (<model>/<version>)"
        )
    return version


def check_target(base_dir: str, model_name: str) -> str:
    """Checks that versions of ``model_name`` can be written under ``base_dir`` before anything is trained for them.

    Raises `ValueError` for a model name that is not one safe path component (``../x`` would write outside
    ``base_dir``) and `OSError` when the folder cannot be created or written. Returns the model folder.
    """
    if not is_safe_model_name(model_name):
        raise ValueError(f"model name {model_name!r} is not a single folder name (letters, digits, '.', '_', '-')")
    model_dir = os.path.join(base_dir, model_name)
    os.makedirs(model_dir, exist_ok=True)
    # Permission bits do not tell (root ignores them, read-only mounts, ACLs): create what an export creates.
    os.rmdir(tempfile.mkdtemp(prefix=".write-check-", dir=model_dir))
    return model_dir
