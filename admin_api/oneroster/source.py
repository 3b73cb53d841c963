"""The files of a OneRoster CSV set, from a folder or a zip, read within fixed bounds.

A roster arrives from a registrar's export job, often over SFTP: the importer must not trust its sizes or
its names. A zip is refused before anything is inflated when it holds too many entries, when the sizes its
directory declares add up past the cap, or when an entry's name climbs out of the set (`..`, an absolute
path); while inflating, reading stops at the cap whatever the directory said (a zip bomb lies about sizes).
Only the set's top-level `*.csv` files are read; a folder's symlinks are not followed.
"""

from __future__ import annotations

import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

MAX_FILES = 64  # OneRoster 1.2 defines 20 CSV files
MAX_FILE_BYTES = 256 * 1024 * 1024
MAX_TOTAL_BYTES = 1024 * 1024 * 1024


class SourceError(Exception):
    """The set cannot be read at all (not a folder or zip, too large, an unsafe name); one line each."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("; ".join(problems))


@dataclass(frozen=True)
class Limits:
    files: int = MAX_FILES
    file_bytes: int = MAX_FILE_BYTES
    total_bytes: int = MAX_TOTAL_BYTES


def read_set(path: Path, limits: Limits = Limits()) -> dict[str, bytes]:
    """{file name: bytes} of the set's CSV files."""
    if path.is_dir():
        return _read_folder(path, limits)
    if path.is_file() and zipfile.is_zipfile(path):
        return _read_zip(path, limits)
    raise SourceError([f"{path}: not a folder or a zip file of OneRoster CSV files"])


def _read_folder(path: Path, limits: Limits) -> dict[str, bytes]:
    entries = [p for p in sorted(path.iterdir()) if p.suffix.lower() == ".csv"]
    if len(entries) > limits.files:
        raise SourceError([f"{path}: {len(entries)} CSV files, more than {limits.files}"])
    out: dict[str, bytes] = {}
    total = 0
    for entry in entries:
        if entry.is_symlink() or not entry.is_file():
            raise SourceError([f"{entry.name}: not a regular file (symlinks are not followed)"])
        size = entry.stat().st_size
        if size > limits.file_bytes:
            raise SourceError([f"{entry.name}: {size} bytes, more than {limits.file_bytes}"])
        total += size
        if total > limits.total_bytes:
            raise SourceError([f"{path}: more than {limits.total_bytes} bytes of CSV files"])
        out[entry.name] = entry.read_bytes()
    return out


def _safe_name(name: str) -> str | None:
    """The entry's file name when it is a plain name at the top of the set (or in one folder, as some
    exporters zip the folder itself); None for names that climb out or are absolute."""
    if "\\" in name or name.startswith("/") or "\x00" in name:
        return None
    parts = PurePosixPath(name).parts
    if any(p in ("..", ".") for p in parts) or len(parts) > 2 or (len(parts) > 1 and ":" in parts[0]):
        return None
    return parts[-1] if parts else None


def _read_zip(path: Path, limits: Limits) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as archive:
        infos = [i for i in archive.infolist() if not i.is_dir()]
        if len(infos) > limits.files:
            raise SourceError([f"{path.name}: {len(infos)} entries, more than {limits.files}"])
        bad = [i.filename for i in infos if _safe_name(i.filename) is None]
        if bad:
            raise SourceError([f"{path.name}: unsafe entry name {n!r} (absolute or with '..')" for n in bad])
        declared = sum(i.file_size for i in infos)
        if declared > limits.total_bytes:
            raise SourceError([f"{path.name}: {declared} bytes uncompressed, more than {limits.total_bytes}"])
        out: dict[str, bytes] = {}
        total = 0
        for info in infos:
            name = str(_safe_name(info.filename))
            if not name.lower().endswith(".csv"):
                continue
            if name in out:
                raise SourceError([f"{path.name}: {name} appears twice"])
            cap = min(limits.file_bytes, limits.total_bytes - total)
            try:
                with archive.open(info) as stream:
                    data = stream.read(cap + 1)  # never more than the cap, whatever the directory declared
            except (zipfile.BadZipFile, zlib.error, EOFError) as exc:  # e.g. a size the directory lied about
                raise SourceError([f"{path.name}: {name} is damaged ({exc})"]) from None
            if len(data) > cap:
                raise SourceError([f"{path.name}: {name} inflates past {cap} bytes"])
            total += len(data)
            out[name] = data
        return out
