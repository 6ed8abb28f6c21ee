"""Archives as inputs (.tar, .tar.gz/.tgz, .zip): list their members, and read members' bytes without extracting.

Kinds, told apart by content, not by name:
  zip     random access: a worker opens the archive once and reads any member (`infolist()` index in the plan)
  zipscan a zip whose central directory is lost (a cut-short download): its members are found from their local
          headers, front to back, and each is read at its offset (stored or deflated, CRC checked)
  tar     an uncompressed tar, random access too: a member is `size` bytes at `offset` (os.pread)
  stream  a compressed tar (gzip, also bzip2/xz): a stream, read front to back. Listing it costs one pass of
          decompression (no decoding); decoding streams it again, handing each wanted member's bytes on.
Members are identified by their position in the archive (a tar may hold two members of one name). Only regular
files are members; links and sparse files are listed as skipped with the reason, hidden names (a path part
starting with '.', or __MACOSX) are skipped silently, as hidden files in folders are. A truncated or corrupt
archive keeps the members listed before the damage and reports where it stopped.
"""
from __future__ import annotations

import os
import struct
import tarfile
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

SUFFIXES = (".tar", ".tar.gz", ".tgz", ".zip")
STREAM_MAGIC = (b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00")
LOCAL_HEADER = struct.Struct("<4sHHHHHIIIHH")  # signature, version, flags, method, time, date, crc, sizes, lengths
READ_ERRORS = (tarfile.TarError, zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, KeyError)


def is_archive(name: str) -> bool:
    return name.lower().endswith(SUFFIXES)


def archive_kind(path: str | Path) -> str:
    """'zip', 'tar' or 'stream' (a compressed tar), from the file's first bytes."""
    with open(path, "rb") as f:
        head = f.read(8)
    if head.startswith(b"PK"):
        return "zip"
    return "stream" if head.startswith(STREAM_MAGIC) else "tar"


def _error(e: BaseException) -> str:
    return " ".join(f"{type(e).__name__}: {e}".split())[:200]


def _hidden(name: str) -> bool:
    return any(part.startswith(".") or part == "__MACOSX" for part in name.split("/") if part)


@dataclass
class Listing:
    """The members of one archive: (position, name, offset, size, crc) each, skipped (name, reason), an error.

    position: the member's index (zip, tar) or its compression method (zipscan); crc: -1 unless zipscan."""

    kind: str
    members: list[tuple[int, str, int, int, int]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    error: str | None = None


def list_members(path: str | Path) -> Listing:
    """List an archive's members; a read error ends the listing (members before it are kept) with `error` set."""
    try:
        kind = archive_kind(path)
    except OSError as e:
        return Listing("unknown", error=f"unreadable: {e.strerror or e}")
    out = Listing(kind)
    try:
        if kind == "zip":
            try:
                zf = zipfile.ZipFile(path)
            except zipfile.BadZipFile as e:
                return _scan_zip(path, _error(e))
            with zf:
                for i, info in enumerate(zf.infolist()):
                    if not info.is_dir() and not _hidden(info.filename):
                        out.members.append((i, info.filename, -1, info.file_size, -1))
            return out
        with tarfile.open(path, "r:" if kind == "tar" else "r|*") as tf:
            for i, m in enumerate(tf):
                tf.members.clear()  # tarfile keeps every TarInfo it read: memory would grow with the archive
                if _hidden(m.name) or m.isdir():
                    continue
                if m.issparse() or not m.isreg():
                    out.skipped.append((m.name, "a link or special member of an archive: not followed"
                                        if not m.issparse() else "a sparse member of an archive: not supported"))
                    continue
                out.members.append((i, m.name, m.offset_data if kind == "tar" else -1, m.size, -1))
    except READ_ERRORS as e:
        where = f"after {len(out.members)} members" if out.members else "at its start"
        what = {"tar": "tar", "stream": "compressed tar"}[kind]
        out.error = f"truncated or corrupt {what} archive, unreadable {where}: {_error(e)}"
    return out


def _scan_zip(path: str | Path, why: str) -> Listing:
    """The members of a zip without its central directory, from the local headers (sizes known, no zip64)."""
    out, end = Listing("zipscan"), os.path.getsize(path)
    with open(path, "rb") as f:
        pos = 0
        while True:
            head = f.read(LOCAL_HEADER.size)
            if len(head) < LOCAL_HEADER.size or not head.startswith(b"PK\x03\x04"):
                break
            _, _, flags, method, _, _, crc, csize, _, nlen, xlen = LOCAL_HEADER.unpack(head)
            name = f.read(nlen).decode("utf-8" if flags & 0x800 else "cp437")
            data = pos + LOCAL_HEADER.size + nlen + xlen
            if flags & 0x8 or csize == 0xFFFFFFFF or method not in (0, 8):
                out.error = f"{name}: sizes in a data descriptor, zip64 or compression {method}: cannot go on"
                break
            if data + csize > end:
                out.skipped.append((name, "member cut short: the archive is truncated"))
                break
            if not name.endswith("/") and not _hidden(name):
                out.members.append((method, name, data, csize, crc))
            pos = data + csize
            f.seek(pos)
    what = f"{len(out.members)} members recovered from their local headers" if out.members else "nothing readable"
    out.error = f"truncated or corrupt zip archive ({why}): {what}" + (f"; stopped at {out.error}" if out.error else "")
    return out


class MemberReader:
    """Reads members of zip and plain-tar archives by position; keeps each archive open (one per worker)."""

    def __init__(self):
        self._zips: dict[str, tuple[zipfile.ZipFile, list]] = {}
        self._fds: dict[str, int] = {}

    def read(self, archive: str, kind: str, position: int, offset: int, size: int, crc: int = -1) -> bytes:
        """The member's bytes; raises one of READ_ERRORS when it cannot be read."""
        if kind == "zip":
            if archive not in self._zips:
                zf = zipfile.ZipFile(archive)
                self._zips[archive] = (zf, zf.infolist())
            zf, infos = self._zips[archive]
            return zf.read(infos[position])  # checks the member's CRC
        if archive not in self._fds:
            self._fds[archive] = os.open(archive, os.O_RDONLY)
        data = os.pread(self._fds[archive], size, offset)
        if len(data) != size:
            raise EOFError(f"archive truncated: {len(data)} of the member's {size} bytes")
        if kind == "zipscan":
            if position == 8:
                data = zlib.decompress(data, -zlib.MAX_WBITS)
            if zlib.crc32(data) != crc:
                raise zipfile.BadZipFile("Bad CRC-32 for the member")
        return data

    def close(self) -> None:
        for zf, _ in self._zips.values():
            zf.close()
        for fd in self._fds.values():
            os.close(fd)
        self._zips.clear()
        self._fds.clear()


def stream_members(archive: str, wanted: dict[int, int]) -> Iterator[tuple[int, bytes | None, str]]:
    """Stream a compressed tar, yielding (slot, bytes, '') for each wanted member position -> slot, in order.

    Members not wanted are read past without being handed on. If the archive cannot be read to its end, each
    wanted member not yet yielded comes as (slot, None, reason)."""
    left = dict(wanted)
    try:
        with tarfile.open(archive, "r|*") as tf:
            for i, m in enumerate(tf):
                tf.members.clear()  # as in list_members: keep memory flat in the archive's size
                slot = left.get(i)
                if slot is not None:
                    f = tf.extractfile(m)
                    data = f.read() if f is not None else b""
                    if len(data) != m.size:
                        raise EOFError(f"member cut short: {len(data)} of {m.size} bytes")
                    del left[i]
                    yield slot, data, ""
                if not left:
                    return
    except READ_ERRORS as e:
        reason = f"archive truncated or corrupt before this member could be read: {_error(e)}"
    else:
        reason = "member missing from the archive (it changed since it was listed?)"
    for slot in sorted(left.values()):
        yield slot, None, reason
