"""Which storage files make up a recording, and recovery of an mcap file cut by a crash.

A recording handed to ``leovl-data`` may be:
- a rosbag2 folder closed cleanly (``metadata.yaml`` + files);
- a folder of segments written by ``leovl_ros/ros/recorder.py`` (one closed rosbag2 folder per
  segment, the last one possibly unfinished);
- a ``ros2 bag record`` folder whose recorder was killed: no ``metadata.yaml`` (or a stale one)
  and an mcap file without its summary and footer, possibly ending in a half-written record;
- a single ``.mcap`` / ``.db3`` file.

Every mcap file below the folder is read directly (rosbags reads raw storage files, so a missing
or stale ``metadata.yaml`` does not matter), in name order, merged by time. An unfinished mcap
is recovered into a temporary copy: the data section up to the last complete record, then a
DataEnd record and a footer without summary (valid MCAP: readers then scan the records instead
of using an index). Chunks and messages written before the crash are all kept; a record torn by
the crash is dropped.
"""
from __future__ import annotations

import logging
import os
import struct
import tempfile
from contextlib import ExitStack
from pathlib import Path

from rosbags.rosbag2.enums import CompressionMode
from rosbags.rosbag2.storage_mcap import McapReader, McapWriter

__all__ = ["mcap_is_finished", "recording_files", "recover_mcap"]

_log = logging.getLogger(__name__)
MCAP_MAGIC = b"\x89MCAP0\r\n"
_OP_FOOTER, _OP_DATA_END = 0x02, 0x0F
_RECORD_HEAD = 9  # opcode (1) + length (8)
_COPY_BLOCK = 1 << 20


def mcap_is_finished(path: str | os.PathLike) -> bool:
    """True when the file ends in a footer and the closing magic (it was closed properly)."""
    with open(path, "rb") as f:
        size = f.seek(0, os.SEEK_END)
        if size < 2 * len(MCAP_MAGIC) + _RECORD_HEAD + 20:
            return False
        f.seek(size - 37)
        tail = f.read(37)
    return tail[0] == _OP_FOOTER and tail[-8:] == MCAP_MAGIC


def _complete_prefix(path: Path) -> tuple[int, int]:
    """(end of the last complete data-section record, file size); 0 if not even the header is whole."""
    with open(path, "rb") as f:
        size = f.seek(0, os.SEEK_END)
        f.seek(0)
        if f.read(len(MCAP_MAGIC)) != MCAP_MAGIC:
            return 0, size
        end = 0
        pos = len(MCAP_MAGIC)
        while pos + _RECORD_HEAD <= size:
            op, length = struct.unpack("<BQ", f.read(_RECORD_HEAD))
            # 0 is no MCAP opcode (zero-filled tail); DataEnd / Footer close the data section.
            if op in (0, _OP_DATA_END, _OP_FOOTER) or pos + _RECORD_HEAD + length > size:
                break
            pos += _RECORD_HEAD + length
            end = pos
            f.seek(pos)
        return end, size


def recover_mcap(src: str | os.PathLike, out_dir: str | os.PathLike) -> tuple[Path, int, int]:
    """A readable copy of the unfinished mcap ``src``, written under ``out_dir``; returns (its path,
    bytes kept, bytes dropped). Raises ValueError when not even the file header survived.

    Two steps, both with rosbags: the complete records + DataEnd + a footer without summary make
    a valid but unindexed file, which rosbags reads only if every message is in time order
    (not so for ``ros2 bag record`` or rosbags' own writer); rewriting its messages through
    rosbags' mcap writer adds the chunk index, and indexed reads merge chunks by time.
    """
    src, out_dir = Path(src), Path(out_dir)
    end, size = _complete_prefix(src)
    if end == 0:
        raise ValueError(f"{src} holds no complete MCAP header ({size} bytes): nothing was recorded")
    scan = out_dir / f"{src.stem}.unindexed.mcap"
    with open(src, "rb") as fin, open(scan, "wb") as fout:
        remaining = end
        while remaining:
            block = fin.read(min(_COPY_BLOCK, remaining))
            if not block:
                raise ValueError(f"{src} shrank while it was being recovered")
            fout.write(block)
            remaining -= len(block)
        fout.write(struct.pack("<BQI", _OP_DATA_END, 4, 0))  # DataEnd, no data-section CRC
        fout.write(struct.pack("<BQQQI", _OP_FOOTER, 20, 0, 0, 0))  # Footer: no summary section
        fout.write(MCAP_MAGIC)
    reader = McapReader(scan)
    reader.open()
    try:
        (out_dir / src.stem).mkdir()
        writer = McapWriter(out_dir / src.stem, CompressionMode.NONE)  # writes out_dir/<stem>/<stem>.mcap
        types: set[str] = set()
        for conn in reader.connections:
            if conn.msgtype not in types:
                writer.add_msgtype(conn)
                types.add(conn.msgtype)
            writer.add_connection(conn, "")
        for conn, stamp, data in reader.messages_scan(reader.connections):
            writer.write(conn, stamp, data)
        writer.close(9, "")
    finally:
        reader.close()
        scan.unlink()
    return writer.path, end, size - end


def _storage_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    visible = [p for p in sorted(path.rglob("*")) if p.is_file()
               and not any(part.startswith(".") for part in p.relative_to(path).parts)]
    mcaps = [p for p in visible if p.suffix == ".mcap"]
    if mcaps:
        return mcaps
    if (path / "metadata.yaml").is_file():
        return [path]  # e.g. a sqlite3 bag: its metadata.yaml names the files
    return [p for p in visible if p.suffix == ".db3"]


def recording_files(path: str | os.PathLike, stack: ExitStack) -> list[Path]:
    """Storage paths to read ``path`` with (see module doc). Unfinished mcap files are replaced by
    recovered copies in a temporary folder that lives as long as ``stack``; files without a
    complete header (killed before anything was written) are left out. Raises ValueError when
    nothing readable remains."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"bag {path} does not exist")
    files = _storage_files(path)
    if not files:
        raise ValueError(f"{path} holds no rosbag2 storage file (.mcap or .db3)")
    out: list[Path] = []
    tmp: Path | None = None
    for f in files:
        if f.suffix != ".mcap" or mcap_is_finished(f):
            out.append(f)
            continue
        if tmp is None:
            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="leovl_recovered_")))
        target = tmp / f"{len(out):05d}"
        target.mkdir()
        try:
            recovered, kept, dropped = recover_mcap(f, target)
        except ValueError as exc:
            _log.warning("skipping %s", exc)
            continue
        _log.warning("%s was not closed (recording killed?): reading the %d bytes recorded before the cut, "
                     "%d torn bytes dropped", f, kept, dropped)
        out.append(recovered)
    if not out:
        raise ValueError(f"{path}: no recorded data survived (every storage file is empty)")
    return out
