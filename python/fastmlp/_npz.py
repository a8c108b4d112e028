"""Bounded reading of untrusted ``.npz`` archives: member names, the zip's sizes and every
member's ``.npy`` header (shape, dtype) are checked before any array data is read, so a file
cannot make the reader allocate more than it holds (or, for a compressed member, a bounded
multiple of it). ``read_npz`` is the general reader; ``fastmlp.io`` reads models and
checkpoints with ``Archive`` against what their ``layer_sizes`` need.

Sizes: a member's data is ``prod(shape) * itemsize`` bytes after its header (``offset``
bytes); its zip entry must hold exactly ``offset + nbytes`` bytes.
"""

from __future__ import annotations

import math
import os
import struct
import zipfile
import zlib

from dataclasses import dataclass

import numpy as np
from numpy.lib import format as npy_format

__all__ = ["read_npz", "npz_names", "DEFAULT_MAX_RATIO"]

MiB = 1 << 20
_EXEMPT_RATIO = MiB       # members that expand to less than this are not ratio-checked
DEFAULT_MAX_RATIO = 200   # fastmlp writes members stored; float parameters deflate ~1.1x

# What a damaged or hostile archive can raise inside zipfile / numpy's header parser; each
# becomes a ValueError that names the file. (Memory is bounded before any data is read, so a
# MemoryError here would be a bug, and is not caught.)
READ_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError,
               struct.error, NotImplementedError, OverflowError, KeyError, IndexError,
               TypeError, AttributeError, SyntaxError, RecursionError, zlib.error)


class Refused(ValueError):
    """A reason to refuse the file; the reader prefixes it with the file's name."""


def _describe_content(path: str) -> str:
    """What a file that is not a zip archive seems to be."""
    with open(path, "rb") as f:
        head = f.read(4096)
    if not head:
        return "it is an empty file"
    if head.startswith(b"\x93NUMPY"):
        return "it is a single .npy array (np.save), not an .npz archive"
    if b"\0" not in head:
        try:
            head.decode("utf-8")
        except UnicodeDecodeError as exc:
            if exc.start < len(head) - 4:  # (not merely a character cut at 4096 bytes)
                return "it is not a zip archive"
        return "it is a text file (a CSV?), not an .npz archive"
    return "it is not a zip archive"


@dataclass
class Header:
    shape: tuple[int, ...]
    fortran: bool
    dtype: np.dtype
    offset: int   # bytes before the data
    nbytes: int   # of the data


class Archive:
    """An open .npz: members listed and checked against the zip's sizes; each member's .npy
    header read without its data; data read only on request, into one allocation of the size
    the header declares (which must be what the member holds)."""

    def __init__(self, path: str, max_ratio: float | None):
        self.path = path
        self.max_ratio = max_ratio
        self._file = open(path, "rb")
        try:
            size = os.fstat(self._file.fileno()).st_size
            try:
                self._zip = zipfile.ZipFile(self._file)
            except zipfile.BadZipFile:
                raise Refused(_describe_content(path)) from None
            self.members: dict[str, zipfile.ZipInfo] = {}
            total = 0
            for info in self._zip.infolist():
                key = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
                if key in self.members:
                    raise Refused(f"member {info.filename!r} appears twice")
                self.members[key] = info
                total += info.compress_size
                if info.compress_size > size or total > size:
                    raise Refused(f"the zip directory claims more data than the file holds "
                                  f"({size} bytes)")
        except BaseException:
            self._file.close()
            raise

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._zip.close()
        self._file.close()

    @property
    def names(self) -> list[str]:
        return list(self.members)

    def _info(self, key: str) -> zipfile.ZipInfo:
        info = self.members[key]
        if not info.filename.endswith(".npy") or info.is_dir():
            raise Refused(f"member {info.filename!r} is not a .npy array")
        if info.flag_bits & 0x1:
            raise Refused(f"member {key!r} is encrypted")
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise Refused(f"member {key!r} uses zip compression method {info.compress_type}; "
                          "only stored and deflated members are read")
        if info.compress_type == zipfile.ZIP_STORED and info.compress_size != info.file_size:
            raise Refused(f"member {key!r} is stored but its sizes disagree")
        if (self.max_ratio is not None and info.file_size > _EXEMPT_RATIO
                and info.file_size > self.max_ratio * max(info.compress_size, 1)):
            raise Refused(f"member {key!r} would expand {info.compress_size} bytes to "
                          f"{info.file_size} (more than {self.max_ratio:g} times: a zip bomb?)")
        return info

    def header(self, key: str) -> Header:
        """The member's .npy header, checked against the member's size; no data read."""
        info = self._info(key)
        with self._zip.open(info) as f:
            version = npy_format.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = npy_format.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, fortran, dtype = npy_format.read_array_header_2_0(f)
            else:
                raise Refused(f"member {key!r} has .npy format version {version}, "
                              "expected 1.0 or 2.0")
            offset = f.tell()
        if dtype.hasobject:
            raise Refused(f"member {key!r} holds pickled Python objects, which are never "
                          "loaded")
        if any(n < 0 for n in shape):
            raise Refused(f"member {key!r} declares a negative shape {shape}")
        nbytes = math.prod(shape) * dtype.itemsize
        if offset + nbytes != info.file_size:
            raise Refused(f"member {key!r} declares shape {shape} of {dtype} ({nbytes} bytes) "
                          f"but holds {info.file_size - offset} bytes")
        return Header(tuple(shape), bool(fortran), dtype, offset, nbytes)

    def read(self, key: str, header: Header) -> np.ndarray:
        """The member's array (``header`` from ``self.header(key)``)."""
        info = self._info(key)
        count = math.prod(header.shape)
        array = np.empty(count, dtype=header.dtype)
        with self._zip.open(info) as f:
            f.read(header.offset)
            if header.nbytes:
                target = memoryview(array.view(np.uint8).reshape(-1))
                done = 0
                while done < header.nbytes:
                    chunk = f.read(min(header.nbytes - done, 4 * MiB))
                    if not chunk:
                        raise Refused(f"member {key!r} is truncated")
                    target[done:done + len(chunk)] = chunk
                    done += len(chunk)
            f.read(1)  # to the end: zipfile checks the CRC there
        if header.fortran:
            return array.reshape(header.shape[::-1]).transpose()
        return array.reshape(header.shape)


def open_archive(path, what: str, max_ratio: float | None) -> tuple[str, Archive]:
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such file: {path!r}")
    if os.path.isdir(path):
        raise ValueError(f"{path!r} is a directory, not {what}")
    try:
        return path, Archive(path, max_ratio)
    except (FileNotFoundError, PermissionError):
        raise
    except READ_ERRORS as exc:
        raise ValueError(f"{path!r} is not {what}: {reason(exc)}") from None


def reason(exc: BaseException) -> str:
    if isinstance(exc, Refused):
        return str(exc)
    if isinstance(exc, RecursionError):
        return "it is nested too deeply"
    return f"it is damaged or not an .npz archive ({type(exc).__name__}: {exc})"


def read_npz(path, *, allowed=None, max_bytes: int | None = None,
             max_ratio: float | None = DEFAULT_MAX_RATIO) -> dict[str, np.ndarray]:
    """The arrays of an ``.npz`` archive, read without pickle, in bounded memory.

    allowed: None reads every member; otherwise a collection of array names: only those
    members are read (others are neither decompressed nor returned, and need not be arrays).
    max_bytes: the most bytes of array data to read in all (the sum of the shapes × item
    sizes the members' ``.npy`` headers declare); None for no bound beyond the file's own.
    max_ratio: a compressed member that would expand more than this many times (and to more
    than 1 MiB) is refused as a zip bomb; None to allow any ratio.

    Every header is read and checked (no objects; the declared shape and dtype exactly fill
    the member; the total within ``max_bytes``) before any array data is read, so memory
    stays within ``max_bytes`` (or the file's size × ``max_ratio``) whatever the file
    declares. Raises FileNotFoundError for a missing file and ValueError, naming the file and
    the reason, for anything else (not a zip, a raw ``.npy``, a text file, damaged,
    truncated, pickled objects, too large).

    For the CLI's data reader, e.g.
    ``read_npz(path, allowed={"X", "y", target, "feature_names"}, max_bytes=limit)``;
    ``npz_names(path)`` lists every member for messages.
    """
    if isinstance(allowed, str):
        allowed = {allowed}
    path, archive = open_archive(path, "a readable .npz archive", max_ratio)
    with archive:
        try:
            keys = [k for k in archive.names if allowed is None or k in allowed]
            headers = {key: archive.header(key) for key in keys}
            total = sum(h.nbytes for h in headers.values())
            if max_bytes is not None and total > max_bytes:
                raise Refused(f"its arrays would take {total} bytes, more than the "
                              f"{max_bytes} allowed")
            return {key: archive.read(key, headers[key]) for key in keys}
        except READ_ERRORS as exc:
            raise ValueError(f"{path!r} is not a readable .npz archive: {reason(exc)}") from None


def npz_names(path) -> list[str]:
    """The array names in an ``.npz`` archive, without reading any array (ValueError if the
    file is not a zip archive, FileNotFoundError if it is missing)."""
    path, archive = open_archive(path, "a readable .npz archive", None)
    with archive:
        return archive.names
