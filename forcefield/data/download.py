"""Optional download of the original 3BPA test files (1200K, dihedral scan).

Only for machines with internet access; never called by the tests. Files come from the
public GitHub repository ``davkovacs/BOTNet-datasets`` at a pinned commit. Integrity is
checked twice: the SHA-1 git blob hash of the downloaded bytes must equal the hash the
pinned commit's tree lists for that path (so the bytes are exactly that commit's file),
and, where known, the MD5 in :data:`KNOWN_MD5`. Files are written to a temporary name and
renamed only after verification.

    from forcefield.data import download_3bpa
    download_3bpa("data/3bpa")             # adds test_1200K.xyz and test_dih.xyz
"""

from __future__ import annotations

import hashlib
import json
import os
import urllib.request
from collections.abc import Iterable, Mapping
from pathlib import Path

from forcefield.atomic_io import atomic_path
from forcefield.data.errors import DataError

REPO = "davkovacs/BOTNet-datasets"
COMMIT = "29e6d467317e4b5967b7ea5cbee54de953fa0d45"
FOLDER = "dataset_3BPA"
# split -> candidate file names in the repository (first one found in the tree is used)
SPLIT_FILES: dict[str, tuple[str, ...]] = {
    "300K": ("test_300K.xyz",),
    "600K": ("test_600K.xyz",),
    "1200K": ("test_1200K.xyz",),
    "dih": ("test_dih.xyz", "test_dih_beta.xyz"),
}
LOCAL_NAMES = {"300K": "test_300K.xyz", "600K": "test_600K.xyz", "1200K": "test_1200K.xyz",
               "dih": "test_dih.xyz"}
# MD5 of files whose original bytes are known (shared/data/3bpa/README.md).
KNOWN_MD5: dict[str, str] = {
    "iso_atoms.xyz": "dcb566f6760236a728c9e14c049fc0b6",
    "train_300K.xyz": "f78c925a4dcd8997d3ac14b3b4fd6752",
    "train_mixedT.xyz": "3e10b0941f209697c417f74437ea47b4",
}
EXPECTED_CONFIGS = {"300K": 1669, "600K": 2138, "1200K": 2139}


def git_blob_sha1(data: bytes) -> str:
    """The git object id of a blob with these bytes (what GitHub trees list)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def verify_bytes(data: bytes, name: str, expected_git_sha: str | None = None,
                 expected_md5: str | None = None) -> None:
    """Raise :class:`DataError` unless ``data`` matches the expected hashes (those given)."""
    if expected_git_sha is not None and git_blob_sha1(data) != expected_git_sha:
        raise DataError(f"checksum mismatch for '{name}': git blob {git_blob_sha1(data)} != "
                        f"{expected_git_sha} at commit {COMMIT[:12]}; the download is corrupt or "
                        "the source changed: retry, or fetch the file by hand.")
    md5 = expected_md5 if expected_md5 is not None else KNOWN_MD5.get(Path(name).name)
    if md5 is not None and hashlib.md5(data).hexdigest() != md5:
        raise DataError(f"checksum mismatch for '{name}': md5 {hashlib.md5(data).hexdigest()} "
                        f"!= {md5}; the download is corrupt: retry.")


def _get(url: str, timeout: float) -> bytes:
    req = urllib.request.Request(url, headers={"User-Agent": "forcefield-data-download"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 - fixed https URLs
        return resp.read()


def _tree(timeout: float) -> Mapping[str, str]:
    url = f"https://api.github.com/repos/{REPO}/git/trees/{COMMIT}?recursive=1"
    listing = json.loads(_get(url, timeout))
    return {item["path"]: item["sha"] for item in listing.get("tree", [])
            if item.get("type") == "blob"}


def download_3bpa(root: str | os.PathLike, splits: Iterable[str] = ("1200K", "dih"),
                  overwrite: bool = False, timeout: float = 60.0) -> dict[str, Path]:
    """Download original 3BPA test splits into ``root`` (needs internet; verified).

    Returns split -> written path. Existing files are kept unless ``overwrite``.
    """
    root = Path(root).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    splits = list(splits)
    unknown = [s for s in splits if s not in SPLIT_FILES]
    if unknown:
        raise DataError(f"unknown 3BPA split(s) {unknown}; choose from {list(SPLIT_FILES)}.")
    try:
        tree = _tree(timeout)
    except OSError as err:
        raise DataError(f"could not reach github.com to list {REPO}@{COMMIT[:12]} ({err}); this"
                        " helper needs internet access; copy the files by hand instead.") from err
    written: dict[str, Path] = {}
    for split in splits:
        target = root / LOCAL_NAMES[split]
        if target.exists() and not overwrite:
            written[split] = target
            continue
        path = next((f"{FOLDER}/{n}" for n in SPLIT_FILES[split] if f"{FOLDER}/{n}" in tree), None)
        if path is None:
            raise DataError(f"{REPO}@{COMMIT[:12]} has none of {SPLIT_FILES[split]} in {FOLDER}/;"
                            " fetch the file by hand.")
        url = f"https://raw.githubusercontent.com/{REPO}/{COMMIT}/{path}"
        try:
            data = _get(url, timeout)
        except OSError as err:
            raise DataError(f"could not download {url} ({err}); retry or copy by hand.") from err
        verify_bytes(data, path, expected_git_sha=tree[path])
        if split in EXPECTED_CONFIGS:
            n = _count_xyz_frames(data)
            if n != EXPECTED_CONFIGS[split]:
                raise DataError(f"'{path}' has {n} structures, expected "
                                f"{EXPECTED_CONFIGS[split]}; the download is wrong: retry.")
        with atomic_path(target, suffix=".part") as tmp:
            tmp.write_bytes(data)
        written[split] = target
    return written


def _count_xyz_frames(data: bytes) -> int:
    lines = data.decode("utf-8", errors="replace").splitlines()
    n, k = 0, 0
    while k < len(lines):
        if not lines[k].strip():
            k += 1
            continue
        k += int(lines[k].split()[0]) + 2
        n += 1
    return n
