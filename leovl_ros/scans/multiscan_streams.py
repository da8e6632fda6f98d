"""MultiScan's two frame streams, read forwards frame by frame (scan_readers.MultiScan): the
raw-deflate ``.depth.zlib`` and the H.264 ``.mp4``."""
from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np


class DeflateFrames:
    """Fixed-size frames of a raw-deflate stream (MultiScan ``.depth.zlib``: all frames
    concatenated, compressed with wbits -15), read forwards without inflating the whole file."""

    def __init__(self, path: Path, frame_bytes: int) -> None:
        self.file = path.open("rb")
        self.inflate = zlib.decompressobj(-zlib.MAX_WBITS)
        self.frame_bytes = frame_bytes
        self.buffer = bytearray()
        self.pos = 0  # stream offset of the buffer's first byte

    def get(self, index: int) -> bytes | None:
        """Frame ``index`` (indices must not decrease), or None when the stream ends first."""
        start = index * self.frame_bytes
        end = start + self.frame_bytes
        while self.pos + len(self.buffer) < end:
            drop = min(max(0, start - self.pos), len(self.buffer))  # frames before `index` stream past
            del self.buffer[:drop]
            self.pos += drop
            chunk = self.file.read(1 << 16)
            try:
                self.buffer += self.inflate.decompress(chunk) if chunk else self.inflate.flush()
            except zlib.error:
                return None  # corrupt stream: this and every later frame are lost
            if not chunk and self.pos + len(self.buffer) < end:
                return None
        offset = start - self.pos
        frame = bytes(self.buffer[offset:offset + self.frame_bytes])
        del self.buffer[:offset + self.frame_bytes]
        self.pos = end
        return frame

    def close(self) -> None:
        self.file.close()


class VideoFrames:
    """Frames of an mp4 by index (increasing), decoded forwards with PyAV (ffmpeg in the wheel)."""

    def __init__(self, path: Path) -> None:
        import av  # imported here: only MultiScan needs a video decoder

        self.container = av.open(str(path))
        self.frames = self.container.decode(video=0)
        self.next_index = 0

    def get(self, index: int) -> np.ndarray | None:
        for frame in self.frames:
            self.next_index += 1
            if self.next_index - 1 == index:
                return frame.to_ndarray(format="rgb24")
        return None

    def close(self) -> None:
        self.container.close()
