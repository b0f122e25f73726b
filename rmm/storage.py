"""Where a run's outputs live: a local directory, or a URI every node of a cluster reaches (``s3://``, ``gs://``,
``abfs://``, ``hdfs://``, ``file://``), read and written through pyarrow filesystems.

Every stage works on a local directory, because numpy, PIL, torch and parquet readers all want one. For a URI,
that directory is a node-local *mirror* (``$RMM_CACHE/mirrors/<hash of the URI>``): a stage pulls what changed
on the URI before it starts and pushes what it wrote when it ends; a process on another node (a Ray Train
worker, an extraction task) pulls the same URI into its own mirror. A file is copied when the other side lacks
it, differs in size, or is older (:func:`sync_tree`); a pulled file keeps the source's modification time, so
a round trip copies nothing. Ray's own directories (``ray_results``, ``tune``) are not mirrored: Ray writes
checkpoints and experiment state straight to the URI, so a run restarted on any node resumes from them.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import posixpath
import re
import shutil
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import pyarrow.fs as pafs

from rmm.errors import ConfigError

CACHE_ENV = "RMM_CACHE"
MIRRORS_DIR = "mirrors"
#: Directories Ray itself writes to the storage location: Train checkpoints and Tune experiment state.
RAY_RESULTS_DIR, TUNE_DIR = "ray_results", "tune"
RAY_DIRS = (RAY_RESULTS_DIR, TUNE_DIR)
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def cache_root() -> Path:
    """``$RMM_CACHE`` or ``~/.cache/rmm``: this node's cache (built tiny models, storage mirrors)."""
    return Path(os.environ.get(CACHE_ENV) or "~/.cache/rmm").expanduser()


def is_uri(location: str | Path) -> bool:
    """Whether ``location`` names a filesystem by scheme (``s3://bucket/run``) rather than a local path."""
    return isinstance(location, str) and bool(_SCHEME.match(location))


def filesystem(location: str) -> tuple[pafs.FileSystem, str]:
    """The pyarrow filesystem of ``location`` and the path inside it: the local one and the absolute path for a
    path; for a URI, query parameters configure the filesystem, e.g.
    ``s3://bucket/run?endpoint_override=localhost:9000&scheme=http`` for MinIO."""
    if not is_uri(location):
        return pafs.LocalFileSystem(), Path(location).resolve().as_posix()
    try:
        return pafs.FileSystem.from_uri(location)
    except (ValueError, OSError) as err:  # pyarrow: ArrowInvalid (a ValueError) for an unknown scheme
        raise ConfigError(f"cannot open storage location {location!r}: {err}") from None


def join_location(location: str, relative: str) -> str:
    """``relative`` (a posix path) under ``location``, a local path or a URI whose query string stays last."""
    base, query = (location.split("?", 1) + [""])[:2] if is_uri(location) else (location, "")
    joined = posixpath.join(base.rstrip("/"), relative) if relative else base
    return f"{joined}?{query}" if query else joined


def open_input(location: str, relative: str) -> BinaryIO:
    """Open ``relative`` under ``location`` (a local directory or URI) for reading bytes; a missing file raises
    ``FileNotFoundError``."""
    fs, root = filesystem(location)
    return fs.open_input_file(posixpath.join(root, relative))


def read_text(location: str) -> str | None:
    """The text of the file at ``location`` (a local path or URI); None when there is no such file."""
    fs, path = filesystem(location)
    if fs.get_file_info(path).type != pafs.FileType.File:
        return None
    with fs.open_input_stream(path) as stream:
        return stream.read().decode()


def write_text(location: str, text: str) -> None:
    """Write ``text`` to the file at ``location`` (a local path or URI), creating its directory."""
    fs, path = filesystem(location)
    fs.create_dir(posixpath.dirname(path), recursive=True)
    with fs.open_output_stream(path) as stream:
        stream.write(text.encode())


@dataclass(frozen=True)
class Storage:
    """A run's output location (``output.dir``) and the local directory stages work in.

    Attributes:
        location: the configured ``output.dir``: a local path or a URI.
    """

    location: str

    @property
    def is_remote(self) -> bool:
        return is_uri(self.location)

    @property
    def local(self) -> Path:
        """The directory stages read and write: ``location`` itself, or this node's mirror of the URI."""
        if not self.is_remote:
            return Path(self.location)
        digest = hashlib.sha256(self.location.encode()).hexdigest()[:16]
        return cache_root() / MIRRORS_DIR / digest

    def where(self, relative: str = "") -> str:
        """Where a person, or Ray (``storage_path`` of :data:`RAY_DIRS`), finds ``relative`` of the outputs: under
        the URI, or as an absolute local path."""
        if self.is_remote:
            return join_location(self.location, relative)
        return str((self.local / relative).resolve())

    def pull(self, *relatives: str, include: str | None = None) -> int:
        """Copy new or changed files of ``relatives`` (default: everything but :data:`RAY_DIRS`) from the URI
        into the mirror; with ``include`` (an ``fnmatch`` pattern on paths relative to each of ``relatives``),
        only the files it matches. Returns the number of files copied; 0 for a local location."""
        if not self.is_remote:
            return 0
        fs, root = filesystem(self.location)
        local = pafs.LocalFileSystem()
        return sum(sync_tree(fs, _child(root, rel), local, _child(str(self.local.resolve()), rel),
                             exclude=() if rel else RAY_DIRS, include=include)
                   for rel in relatives or ("",))

    def push(self, *relatives: str, delete: bool = False) -> int:
        """Copy new or changed files of ``relatives`` (default: everything but :data:`RAY_DIRS`) from the mirror
        to the URI; with ``delete``, also remove files there that the mirror no longer has (the mirror holds the
        whole truth of those directories). Returns the number of files copied; 0 for a local location."""
        if not self.is_remote:
            return 0
        fs, root = filesystem(self.location)
        local = pafs.LocalFileSystem()
        return sum(sync_tree(local, _child(str(self.local.resolve()), rel), fs, _child(root, rel),
                             exclude=() if rel else RAY_DIRS, delete=delete)
                   for rel in relatives or ("",))

    def remove(self, *relatives: str) -> None:
        """Delete the directories ``relatives`` in the local directory and, for a URI, at the URI too."""
        for rel in relatives:
            if not rel:
                raise ValueError("refusing to remove the whole output directory")
            shutil.rmtree(self.local / rel, ignore_errors=True)
            if self.is_remote:
                fs, root = filesystem(self.location)
                if fs.get_file_info(_child(root, rel)).type == pafs.FileType.Directory:
                    fs.delete_dir(_child(root, rel))

    def relative(self, path: str | Path) -> str:
        """``path`` (inside :attr:`local`) relative to it, as a posix string."""
        return Path(path).resolve().relative_to(self.local.resolve()).as_posix()

    def location_of(self, path: str | Path) -> str:
        """:meth:`where` for ``path`` inside :attr:`local`: its place under the URI, or itself, absolute."""
        return self.where(self.relative(path))


def _child(root: str, relative: str) -> str:
    return posixpath.join(root, relative) if relative else root


def sync_tree(src_fs: pafs.FileSystem, src: str, dst_fs: pafs.FileSystem, dst: str, *,
              exclude: Iterable[str] = (), include: str | None = None, delete: bool = False) -> int:
    """Make ``dst`` hold every file of ``src``: copy a file when ``dst`` lacks it, its size differs, or the
    source is newer, in whole seconds (object stores keep no finer times); where ``dst`` is local, the copy
    gets the source's time, so a round trip copies nothing. As with ``aws s3 sync``, a rewrite that keeps the
    size within the second of the last copy goes unseen. Local copies are written to a temp name and renamed,
    so a process of the same node never reads half a file. ``src`` may be a single file; ``exclude`` names
    top-level entries of ``src`` left alone on both sides, ``include`` (an ``fnmatch`` pattern) the only files
    taken into account. Returns the number of files copied.
    """
    source = _files(src_fs, src, exclude, include)
    target = _files(dst_fs, dst, exclude, include)
    local = isinstance(dst_fs, pafs.LocalFileSystem)
    copied = 0
    for relative, info in source.items():
        have = target.get(relative)
        if have is not None and have.size == info.size and _seconds(have) >= _seconds(info):
            continue
        destination = _child(dst, relative)
        dst_fs.create_dir(posixpath.dirname(destination), recursive=True)
        staging = f"{destination}.{uuid.uuid4().hex}.sync-tmp" if local else destination
        pafs.copy_files(info.path, staging, source_filesystem=src_fs, destination_filesystem=dst_fs)
        if local:
            stamp = _seconds(info)
            os.utime(staging, (stamp, stamp))
            os.replace(staging, destination)
        copied += 1
    if delete:
        for relative in sorted(set(target) - set(source)):
            dst_fs.delete_file(_child(dst, relative))
    return copied


def _seconds(info: pafs.FileInfo) -> int:
    """Modification time in whole seconds (0 when the filesystem gives none: then only sizes decide)."""
    return int(info.mtime.timestamp()) if info.mtime is not None else 0


def _files(fs: pafs.FileSystem, root: str, exclude: Iterable[str],
           include: str | None = None) -> dict[str, pafs.FileInfo]:
    """Relative posix path -> info of every file under ``root`` (``root`` itself when it is a file), less the
    top-level entries ``exclude`` names and the paths ``include`` does not match."""
    info = fs.get_file_info(root)
    if info.type == pafs.FileType.File:
        return {"": info}
    if info.type != pafs.FileType.Directory:
        return {}
    skip = tuple(exclude)
    found = {}
    for entry in fs.get_file_info(pafs.FileSelector(root, recursive=True)):
        relative = entry.path[len(root.rstrip("/")) + 1:]
        if (entry.type == pafs.FileType.File and relative.split("/", 1)[0] not in skip
                and (include is None or fnmatch.fnmatchcase(relative, include))):
            found[relative] = entry
    return found
