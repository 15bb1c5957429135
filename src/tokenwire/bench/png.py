"""A tiny PNG bar-chart writer (zlib + a 3x5 bitmap font), so ``--chart`` needs no matplotlib.

Why not matplotlib: it is ~40 MB with numpy and is not installed here; the chart
is a handful of labelled bars, which 150 lines of stdlib draw reliably anywhere
the gateway runs.
"""

from __future__ import annotations

import struct
import zlib

__all__ = ["bar_chart_png"]

# 3x5 glyphs, one int per row (bit 2 = left column).
_FONT: dict[str, tuple[int, ...]] = {
    "0": (7, 5, 5, 5, 7), "1": (2, 6, 2, 2, 7), "2": (7, 1, 7, 4, 7), "3": (7, 1, 7, 1, 7),
    "4": (5, 5, 7, 1, 1), "5": (7, 4, 7, 1, 7), "6": (7, 4, 7, 5, 7), "7": (7, 1, 1, 1, 1),
    "8": (7, 5, 7, 5, 7), "9": (7, 5, 7, 1, 7), "A": (2, 5, 7, 5, 5), "B": (6, 5, 6, 5, 6),
    "C": (3, 4, 4, 4, 3), "D": (6, 5, 5, 5, 6), "E": (7, 4, 6, 4, 7), "F": (7, 4, 6, 4, 4),
    "G": (3, 4, 5, 5, 3), "H": (5, 5, 7, 5, 5), "I": (7, 2, 2, 2, 7), "J": (1, 1, 1, 5, 2),
    "K": (5, 5, 6, 5, 5), "L": (4, 4, 4, 4, 7), "M": (5, 7, 7, 5, 5), "N": (6, 5, 5, 5, 5),
    "O": (2, 5, 5, 5, 2), "P": (6, 5, 6, 4, 4), "Q": (2, 5, 5, 6, 3), "R": (6, 5, 6, 5, 5),
    "S": (3, 4, 2, 1, 6), "T": (7, 2, 2, 2, 2), "U": (5, 5, 5, 5, 7), "V": (5, 5, 5, 5, 2),
    "W": (5, 5, 7, 7, 5), "X": (5, 5, 2, 5, 5), "Y": (5, 5, 2, 2, 2), "Z": (7, 1, 2, 4, 7),
    ".": (0, 0, 0, 0, 2), "-": (0, 0, 7, 0, 0), "/": (1, 1, 2, 4, 4), ":": (0, 2, 0, 2, 0),
    "%": (5, 1, 2, 4, 5), "(": (2, 4, 4, 4, 2), ")": (2, 1, 1, 1, 2), "_": (0, 0, 0, 0, 7),
    "=": (0, 7, 0, 7, 0), ",": (0, 0, 0, 2, 4), "@": (2, 5, 7, 4, 3), " ": (0, 0, 0, 0, 0),
}  # fmt: skip

_PALETTE = [(52, 101, 164), (204, 102, 0), (78, 154, 6), (117, 80, 123), (193, 125, 17), (164, 0, 0)]


class _Canvas:
    def __init__(self, width: int, height: int) -> None:
        self.w, self.h = width, height
        self.px = bytearray(b"\xff" * (width * height * 3))

    def rect(self, x: int, y: int, w: int, h: int, rgb: tuple[int, int, int]) -> None:
        x0, y0, x1, y1 = max(0, x), max(0, y), min(self.w, x + w), min(self.h, y + h)
        if x1 <= x0 or y1 <= y0:
            return
        row = bytes(rgb) * (x1 - x0)
        for yy in range(y0, y1):
            i = (yy * self.w + x0) * 3
            self.px[i : i + len(row)] = row

    def text(self, x: int, y: int, s: str, scale: int = 2, rgb: tuple[int, int, int] = (0, 0, 0)) -> int:
        for ch in s.upper():
            glyph = _FONT.get(ch, _FONT[" "])
            for r, bits in enumerate(glyph):
                for c in range(3):
                    if bits & (4 >> c):
                        self.rect(x + c * scale, y + r * scale, scale, scale, rgb)
            x += 4 * scale
        return x

    def png(self) -> bytes:
        raw = b"".join(b"\x00" + bytes(self.px[y * self.w * 3 : (y + 1) * self.w * 3]) for y in range(self.h))

        def chunk(kind: bytes, data: bytes) -> bytes:
            return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

        header = struct.pack(">IIBBBBB", self.w, self.h, 8, 2, 0, 0, 0)
        body = chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")
        return b"\x89PNG\r\n\x1a\n" + body


def bar_chart_png(title: str, panels: list[tuple[str, list[tuple[str, float, int]]]]) -> bytes:
    """Side-by-side horizontal bar panels; each bar is (label, value, colour index)."""
    rows = max((len(bars) for _, bars in panels), default=1)
    label_w = 8 * max((len(label) for _, bars in panels for label, _, _ in bars), default=4) + 16
    panel_w, bar_h, top = 300, 18, 50
    width = label_w + len(panels) * (panel_w + 90) + 10
    height = top + rows * (bar_h + 6) + 20
    cv = _Canvas(width, height)
    cv.text(10, 10, title, 2)
    for p, (heading, bars) in enumerate(panels):
        x0 = label_w + p * (panel_w + 90)
        cv.text(x0, 30, heading, 2, (60, 60, 60))
        top_value = max((v for _, v, _ in bars), default=1.0) or 1.0
        for i, (label, value, colour) in enumerate(bars):
            y = top + i * (bar_h + 6)
            if p == 0:
                cv.text(10, y + 4, label, 2)
            length = max(1, int(panel_w * value / top_value))
            cv.rect(x0, y, length, bar_h, _PALETTE[colour % len(_PALETTE)])
            cv.text(x0 + length + 6, y + 4, f"{value:.0f}" if value >= 10 else f"{value:.1f}", 2)
    return cv.png()
