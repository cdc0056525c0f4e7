"""A contact sheet for a person to look at before a release: N seeded before/after pairs in one PNG.

Figures say whether recognisers still match; only eyes say whether an output looks like a face a
model could learn from, or like damage. The sheet shows each drawn original beside its anonymized
image, the run's face boxes outlined on both, the path under them. It shows original faces, so it
is written outside both folders (``<anonymized>-preview.png`` by default) and must stay private.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from anonymize.audit.outside import refuse_inside
from anonymize.audit.pairing import AuditError, ImagePair, pair_images
from anonymize.audit.sampling import sample_indices
from anonymize.io.decode import ImageDecodeError, decode_image
from anonymize.io.write import atomic_write_bytes

THUMB_HEIGHT = 240  # each image of a pair, in pixels
MAX_THUMB_WIDTH = 360
PAIRS_PER_ROW = 2
CAPTION = 16  # pixels under each pair for its path
GAP = 8
BOX_COLOUR = (255, 64, 64)


def default_preview_path(anonymized_dir: Path) -> Path:
    anonymized_dir = Path(anonymized_dir)
    return anonymized_dir.parent / f"{anonymized_dir.name}-preview.png"


def _thumbnail(rgb: np.ndarray, boxes: tuple, size: tuple[int, int]) -> Image.Image:
    """``rgb`` scaled to ``size`` with the run's face boxes outlined (what the method was asked to change)."""
    height, width = rgb.shape[:2]
    image = Image.fromarray(rgb).resize(size, Image.Resampling.BILINEAR)
    draw = ImageDraw.Draw(image)
    scale_x, scale_y = size[0] / width, size[1] / height
    for x0, y0, x1, y1 in boxes:
        draw.rectangle([x0 * scale_x, y0 * scale_y, x1 * scale_x, y1 * scale_y], outline=BOX_COLOUR, width=2)
    return image


def _pair_image(pair: ImagePair) -> Image.Image:
    """Original | anonymized, at one height, with the path under them (an unreadable side says so)."""
    output = decode_image(pair.output_path).rgb
    original = decode_image(pair.source_path).rgb if pair.source_path is not None else np.full_like(output, 128)
    height, width = original.shape[:2]
    thumb_width = max(1, min(MAX_THUMB_WIDTH, round(width * THUMB_HEIGHT / height)))
    size = (thumb_width, THUMB_HEIGHT)
    sheet = Image.new("RGB", (2 * thumb_width + GAP, THUMB_HEIGHT + CAPTION), "white")
    sheet.paste(_thumbnail(original, pair.manifest_boxes, size), (0, 0))
    sheet.paste(_thumbnail(output if output.shape == original.shape else np.asarray(Image.fromarray(output).resize((width, height))),
                           pair.manifest_boxes, size), (thumb_width + GAP, 0))
    ImageDraw.Draw(sheet).text((2, THUMB_HEIGHT + 2), pair.output_rel[-60:], fill="black")
    return sheet


def contact_sheet(tiles: list[Image.Image]) -> Image.Image:
    """The pairs' images in rows of PAIRS_PER_ROW, in the order given."""
    rows = [tiles[start:start + PAIRS_PER_ROW] for start in range(0, len(tiles), PAIRS_PER_ROW)]
    width = max(sum(tile.width for tile in row) + GAP * (len(row) - 1) for row in rows)
    height = sum(max(tile.height for tile in row) for row in rows) + GAP * (len(rows) - 1)
    sheet = Image.new("RGB", (width, height), "white")
    top = 0
    for row in rows:
        left = 0
        for tile in row:
            sheet.paste(tile, (left, top))
            left += tile.width + GAP
        top += max(tile.height for tile in row) + GAP
    return sheet


def write_preview(original_dir: Path, anonymized_dir: Path, count: int, seed: int = 0, out: Path | None = None,
                  manifest_path: Path | None = None) -> tuple[Path, int]:
    """Draw ``count`` released images with ``seed`` and write their contact sheet; returns its path and the pairs shown.

    Images that cannot be decoded are left out (the audit lists them); none left is an error."""
    out = Path(out) if out is not None else default_preview_path(anonymized_dir)
    refuse_inside(out, "preview (it shows original faces)", original_dir, anonymized_dir)
    pairing = pair_images(Path(original_dir), Path(anonymized_dir), manifest_path)
    pairs = [pair for pair in pairing.pairs if pair.source_path is not None]
    chosen = sorted(sample_indices([pair.output_rel for pair in pairs], count, seed))
    tiles = []
    for index in chosen:
        try:
            tiles.append(_pair_image(pairs[index]))
        except ImageDecodeError:
            continue
    if not tiles:
        raise AuditError(f"{anonymized_dir}: no released image with a readable original to preview")
    buffer = io.BytesIO()
    contact_sheet(tiles).save(buffer, format="PNG")
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out, buffer.getvalue())
    return out, len(tiles)
