"""Make docs/phantom_contact_sheet.png: every phantom finding at two severities on one anatomy.

Usage: python docs/phantom_contact_sheet.py [--size 256] [--out docs/phantom_contact_sheet.png]

Each tile is the same phantom case (same anatomy, site and seed) with one
finding inserted; the yellow rectangle is the finding's ground-truth box.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from chexgen.phantom import Finding, load_atlas, load_prevalence, render_case, sample_case

F = Finding
ROWS: list[tuple[str, list[Finding], list[Finding]]] = [
    ("No Finding", [], []),
    ("Enlarged Cardiomediastinum", [F("Enlarged Cardiomediastinum", severity="small", zone="upper")],
     [F("Enlarged Cardiomediastinum", severity="large", zone="upper")]),
    ("Cardiomegaly", [F("Cardiomegaly", severity="small")], [F("Cardiomegaly", severity="large")]),
    ("Lung Opacity", [F("Lung Opacity", "right", "small", "middle")], [F("Lung Opacity", "right", "large", "middle")]),
    ("Lung Lesion", [F("Lung Lesion", "right", "small", "upper", "nodule")], [F("Lung Lesion", "right", "large", "middle", "mass")]),
    ("Edema", [F("Edema", "bilateral", "small")], [F("Edema", "bilateral", "large")]),
    ("Consolidation", [F("Consolidation", "right", "small", "lower")], [F("Consolidation", "right", "large", "lower")]),
    ("Pneumonia", [F("Pneumonia", "left", "small", "lower")], [F("Pneumonia", "left", "large", "lower")]),
    ("Atelectasis", [F("Atelectasis", "right", "small", "lower")], [F("Atelectasis", "right", "large", "lower")]),
    ("Pneumothorax", [F("Pneumothorax", "right", "small", "upper")], [F("Pneumothorax", "right", "large", "upper")]),
    ("Pleural Effusion", [F("Pleural Effusion", "right", "small", "lower")], [F("Pleural Effusion", "right", "large", "lower")]),
    ("Pleural Other", [F("Pleural Other", "right", "small", "middle", "pleural_thickening")],
     [F("Pleural Other", "right", "large", "middle", "pleural_thickening")]),
    ("Fracture", [F("Fracture", "right", "small", "middle", "rib_fracture")], [F("Fracture", "right", "large", "middle", "rib_fracture")]),
    ("Support Devices", [F("Support Devices", None, None, None, "et_tube"), F("Support Devices", "right", None, None, "central_line")],
     [F("Support Devices", "left", None, None, "pacemaker")]),
]


def tile(image: np.ndarray, boxes, caption: str) -> Image.Image:
    im = Image.fromarray((image * 255).astype(np.uint8)).convert("RGB")
    d = ImageDraw.Draw(im)
    for label, _, (x0, y0, x1, y1) in boxes:
        d.rectangle([x0, y0, x1 - 1, y1 - 1], outline=(255, 220, 0))
    d.rectangle([0, 0, im.width, 13], fill=(0, 0, 0))
    d.text((3, 1), caption, fill=(255, 255, 255))
    return im


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=256, help="Tile size in pixels.")
    ap.add_argument("--seed", type=int, default=0, help="Phantom seed.")
    ap.add_argument("--index", type=int, default=4, help="Case index whose anatomy and site all tiles share.")
    ap.add_argument("--out", default=str(Path(__file__).with_name("phantom_contact_sheet.png")), help="Output PNG.")
    args = ap.parse_args()
    atlas = load_atlas("PA")
    prev = load_prevalence("mimic")
    tiles = []
    for name, small, large in ROWS:
        for sev, findings in (("small", small), ("large", large)):
            index = args.index + (1 if name == "No Finding" and sev == "large" else 0)
            r = render_case(sample_case(args.seed, index, prev, findings=findings), atlas, args.size)
            caption = name if name == "No Finding" else f"{name} ({sev})"
            if name == "Support Devices":
                caption = "ET tube + central line" if sev == "small" else "Pacemaker"
            tiles.append(tile(r.image, r.boxes, caption))
    cols = 7
    rows = (len(tiles) + cols - 1) // cols
    sheet = Image.new("RGB", (cols * args.size, rows * args.size))
    for i, t in enumerate(tiles):
        sheet.paste(t, ((i % cols) * args.size, (i // cols) * args.size))
    sheet.save(args.out, optimize=True)
    print(f"wrote {args.out} ({len(tiles)} tiles)")


if __name__ == "__main__":
    main()
