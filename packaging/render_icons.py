"""Write the HashView icon: ``resources/icons/hashview.svg`` and its PNG renders.

The design: a tile of deep indigo, a pink H&E tissue section with purple nuclei, a magnifier
over it, and a strip of binary code bits along the bottom (the hash). Re-run after editing the
SVG below:

    python packaging/render_icons.py

Needs PySide6 (QtSvg is part of PySide6-Essentials). Writes hashview-<N>.png for each size.
"""

from __future__ import annotations

import sys
from pathlib import Path

SIZES = (16, 24, 32, 48, 64, 128, 256, 512)
ICONS = Path(__file__).resolve().parent.parent / "resources" / "icons"

# Nuclei: (cx, cy, rx, ry, rotation) inside the tissue; dark hematoxylin purple.
_NUCLEI = [(150, 205, 13, 9, 20), (196, 180, 11, 8, -30), (128, 262, 12, 9, 60),
           (182, 300, 13, 8, 10), (232, 330, 10, 8, -45), (110, 320, 11, 8, 35),
           (300, 360, 12, 8, 70), (160, 355, 10, 7, -20),
           (355, 330, 11, 8, 40), (372, 200, 10, 7, -60), (236, 372, 11, 8, 25)]
_BITS = "10110100"

SVG = """<?xml version="1.0" encoding="UTF-8"?>
<svg xmlns="http://www.w3.org/2000/svg" width="512" height="512" viewBox="0 0 512 512">
  <defs>
    <linearGradient id="bg" x1="0" y1="0" x2="0" y2="1">
      <stop offset="0" stop-color="#3b2c78"/>
      <stop offset="1" stop-color="#1d1640"/>
    </linearGradient>
    <radialGradient id="tissue" cx="0.42" cy="0.40" r="0.65">
      <stop offset="0" stop-color="#fbc3dc"/>
      <stop offset="0.65" stop-color="#f08cbb"/>
      <stop offset="1" stop-color="#d0609b"/>
    </radialGradient>
    <radialGradient id="lens" cx="0.38" cy="0.32" r="0.75">
      <stop offset="0" stop-color="#ffffff" stop-opacity="0.55"/>
      <stop offset="0.5" stop-color="#ffffff" stop-opacity="0.12"/>
      <stop offset="1" stop-color="#ffffff" stop-opacity="0.04"/>
    </radialGradient>
  </defs>
  <rect x="24" y="24" width="464" height="464" rx="104" fill="url(#bg)"/>
  <path d="M 92 220 C 70 160 120 106 186 112 C 236 116 262 84 320 98 C 384 114 420 170 402 226
           C 390 266 420 300 398 346 C 374 396 316 404 270 392 C 226 382 196 410 148 398
           C 96 384 70 338 88 298 C 100 270 102 250 92 220 Z" fill="url(#tissue)"/>
  <path d="M 150 150 C 190 140 220 160 250 150" fill="none" stroke="#e27aae" stroke-width="6"
        stroke-linecap="round" opacity="0.7"/>
  <path d="M 120 380 C 160 370 190 388 240 376" fill="none" stroke="#e27aae" stroke-width="6"
        stroke-linecap="round" opacity="0.7"/>
{nuclei}
  <circle cx="292" cy="232" r="104" fill="#fbd3e6"/>
  <circle cx="292" cy="232" r="104" fill="url(#lens)"/>
  <ellipse cx="262" cy="206" rx="22" ry="15" transform="rotate(-25 262 206)" fill="#5b2a8c"/>
  <ellipse cx="322" cy="258" rx="20" ry="14" transform="rotate(30 322 258)" fill="#5b2a8c"/>
  <ellipse cx="300" cy="184" rx="14" ry="10" transform="rotate(10 300 184)" fill="#6d3aa3"/>
  <circle cx="292" cy="232" r="104" fill="none" stroke="#f4f2fb" stroke-width="26"/>
  <circle cx="292" cy="232" r="119" fill="none" stroke="#1d1640" stroke-width="4" opacity="0.35"/>
  <path d="M 368 308 L 430 370" stroke="#f4f2fb" stroke-width="40" stroke-linecap="round"/>
  <path d="M 398 338 L 430 370" stroke="#8f7be0" stroke-width="40" stroke-linecap="round"/>
{bits}
</svg>
"""


def svg_text() -> str:
    nuclei = "\n".join(
        f'  <ellipse cx="{x}" cy="{y}" rx="{rx}" ry="{ry}" transform="rotate({a} {x} {y})" '
        f'fill="#5b2a8c" opacity="0.9"/>' for x, y, rx, ry, a in _NUCLEI)
    cell, gap, y = 30, 10, 432
    x0 = 256 - (len(_BITS) * cell + (len(_BITS) - 1) * gap) // 2
    bits = []
    for i, bit in enumerate(_BITS):
        x = x0 + i * (cell + gap)
        if bit == "1":
            bits.append(f'  <rect x="{x}" y="{y}" width="{cell}" height="{cell}" rx="7" '
                        f'fill="#5fe0c8"/>')
        else:
            bits.append(f'  <rect x="{x}" y="{y}" width="{cell}" height="{cell}" rx="7" '
                        f'fill="#5fe0c8" opacity="0.25"/>')
    return SVG.replace("{nuclei}", nuclei).replace("{bits}", "\n".join(bits))


def render(svg_path: Path, out_dir: Path) -> list[Path]:
    from PySide6.QtCore import QRectF, Qt
    from PySide6.QtGui import QGuiApplication, QImage, QPainter
    from PySide6.QtSvg import QSvgRenderer

    app = QGuiApplication.instance() or QGuiApplication(sys.argv[:1])  # noqa: F841
    renderer = QSvgRenderer(str(svg_path))
    if not renderer.isValid():
        raise SystemExit(f"{svg_path}: not a valid SVG")
    written = []
    for size in SIZES:
        image = QImage(size, size, QImage.Format.Format_ARGB32_Premultiplied)
        image.fill(Qt.GlobalColor.transparent)
        painter = QPainter(image)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        painter.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform)
        renderer.render(painter, QRectF(0, 0, size, size))
        painter.end()
        path = out_dir / f"hashview-{size}.png"
        if not image.save(str(path), "PNG"):
            raise SystemExit(f"{path}: cannot write")
        written.append(path)
    return written


def main() -> int:
    ICONS.mkdir(parents=True, exist_ok=True)
    svg_path = ICONS / "hashview.svg"
    svg_path.write_text(svg_text(), encoding="utf-8")
    for path in [svg_path, *render(svg_path, ICONS)]:
        print(f"{path} ({path.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
