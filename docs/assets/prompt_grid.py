"""Lay out the images of a ``chexgen generate`` folder as a labelled grid (one row per prompt).

Usage: python docs/assets/prompt_grid.py OUTPUT_FOLDER GRID.png [--tile 128] [--per-prompt 4]

The README picture was made with:

    chexgen generate "Moderate right pleural effusion." "Cardiomegaly." "Large left pneumothorax." \
        "No acute cardiopulmonary process." -n 4 --seed 0 --precision fp32 --out readme-grid
    python docs/assets/prompt_grid.py readme-grid docs/assets/readme_grid.png

Rows follow the prompts' order in the manifest; the prompt is written left of its row.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from chexgen.data.manifest import read_manifest


def prompt_grid(folder: str | Path, out: str | Path, tile: int = 128, per_prompt: int = 4,
                label_width: int = 230, gap: int = 4) -> Path:
    """Write a grid of the folder's images, one row per prompt with the prompt as its label."""
    folder = Path(folder)
    rows: dict[str, list[Path]] = {}
    for record in read_manifest(folder / "manifest.jsonl"):
        prompt = (record.provenance or {}).get("prompt") or record.impression or record.id
        rows.setdefault(prompt, []).append(record.resolve(record.image, folder))
    if not rows:
        raise SystemExit(f"{folder}/manifest.jsonl lists no images")
    width = label_width + per_prompt * (tile + gap)
    canvas = Image.new("L", (width, len(rows) * (tile + gap) - gap), 255)
    draw = ImageDraw.Draw(canvas)
    try:
        font = ImageFont.load_default(size=15)
    except TypeError:  # Pillow < 10.1 has one bitmap size only
        font = ImageFont.load_default()
    for i, (prompt, paths) in enumerate(rows.items()):
        y = i * (tile + gap)
        words, lines = prompt.split(), [""]
        for word in words:  # wrap the prompt to the label column
            trial = (lines[-1] + " " + word).strip()
            if draw.textlength(trial, font=font) > label_width - 12 and lines[-1]:
                lines.append(word)
            else:
                lines[-1] = trial
        for k, line in enumerate(lines):
            draw.text((4, y + tile // 2 - 10 * len(lines) + 20 * k), line, fill=0, font=font)
        for j, path in enumerate(paths[:per_prompt]):
            img = Image.open(path).convert("L").resize((tile, tile), Image.BILINEAR)
            canvas.paste(img, (label_width + j * (tile + gap), y))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out, optimize=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("folder", help="A chexgen generate output folder (with manifest.jsonl).")
    parser.add_argument("out", help="PNG file to write.")
    parser.add_argument("--tile", type=int, default=128, help="Size of one image in the grid, in pixels.")
    parser.add_argument("--per-prompt", type=int, default=4, help="Images shown per prompt (row length).")
    args = parser.parse_args()
    print(prompt_grid(args.folder, args.out, tile=args.tile, per_prompt=args.per_prompt))


if __name__ == "__main__":
    main()
