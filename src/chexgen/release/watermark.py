"""An invisible watermark that marks a radiograph as chexgen-generated, in its pixels.

A PNG text chunk is lost as soon as an image is re-saved or converted; the
watermark is in the pixels, so it survives JPEG compression, resizing,
contrast / window changes, 8-bit requantisation and a DICOM round trip (see
``benchmarks/watermark.py`` for the measured rates).

Library: ``invisible-watermark`` (``imwatermark``, MIT), its DWT-DCT-SVD
method: one bit per 4 x 4 block of the Haar-DWT low band, written by
quantising the block's largest singular value of its DCT (quantisation index
modulation) with the library's ``EmbedDwtDctSvd.encode_frame`` /
``infer_dct_svd``. ``trustmark`` (Adobe) was the other candidate: it fetches
its network weights from Adobe's servers on first use, which these machines
cannot reach, so it is out. The library's RivaGAN model (ONNX, shipped in the
package) only decodes colour frames: on gray images its bits are at chance.

How chexgen uses the library, and why not its ``WatermarkEncoder.encode``:

* that entry point refuses images under 256 x 256, works on 8-bit BGR
  through YUV, and on reconstruction swaps the horizontal and vertical detail
  bands (harmless on chroma, visible on a gray image: PSNR ~27 dB). chexgen
  calls the library's per-frame coder on the low band directly.
* **Canonical grid.** The low band is a ``GRID`` x ``GRID`` area-resized copy
  of the image (twice the pixel mean, as Haar's low band is), whatever the
  image size; the change is resized back and added to the full-resolution
  image. The detector resizes any input to the same grid, so resizing does not
  move the blocks.
* **Intensity normalisation.** Before coding, the grid is standardised (mean
  0, standard deviation ``REF_STD``); the detector standardises what it
  receives the same way, so a linear contrast / window change is undone.
* **Payload with error correction.** 6 bytes (3 of a hash of the image id, 3
  of a hash of the unmarked pixels) plus ``PARITY`` Reed-Solomon bytes
  (``reedsolo``), repeated over the 1024 blocks and majority-voted.
* **Score.** The mean vote agreement over bits, 0 (chance) .. 1 (unanimous).
  A mark is *found* when the Reed-Solomon decode succeeds and the score
  reaches ``MIN_SCORE``; unmarked radiographs score ~0.2-0.3.
* **Clipped blocks.** Blocks flat at the image's darkest or brightest value
  could not be moved by the embedder (clipping) and are left out of the vote.
* **Not survived: crops.** Cropping moves the block grid and changes the
  statistics; the detector does not re-synchronise (measured: 0 % after a
  10 % crop). Nonlinear tone curves (gamma) mostly break it too.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

import numpy as np

from chexgen.errors import ChexgenError

__all__ = [
    "WatermarkResult",
    "make_payload",
    "embed_watermark",
    "detect_watermark",
    "watermark_provenance",
    "apply_watermark",
    "payload_id_part",
    "pixels_sha256",
    "METHOD",
]

GRID = 128  # side of the canonical low-band grid (blocks: GRID / 4 squared = 1024)
BLOCK = 4
STRENGTH = 32.0  # quantisation step of the singular value, in units where the grid's std is REF_STD
REF_STD = 40.0
PARITY = 4  # Reed-Solomon parity bytes: corrects 2 wrong bytes of the 10
DATA_BYTES = 6
MIN_SCORE = 0.5  # unmarked radiographs score 0.2-0.3; marked ones 0.9+ (benchmarks/watermark.py)
PASSES = 2  # embedding passes (see embed_watermark)
WINSOR = 15.0  # percent of the grid's darkest / brightest cells clipped before its mean and std are taken
METHOD = "imwatermark-dwtDctSvd-grid128"
_PAYLOAD_RE = re.compile(r"^chexgen:([0-9a-f]{6}):([0-9a-f]{6})$")


@dataclass
class WatermarkResult:
    """What :func:`detect_watermark` found: ``payload`` is set only when ``found``; ``score`` 0..1."""

    found: bool
    payload: str | None
    score: float


def pixels_sha256(pixels: np.ndarray) -> str:
    """SHA-256 of the pixel array's bytes with its shape and dtype (hex)."""
    a = np.ascontiguousarray(pixels)
    h = hashlib.sha256(f"{a.dtype.str}{a.shape}".encode())
    h.update(a.tobytes())
    return h.hexdigest()


def payload_id_part(image_id: str) -> str:
    """The 6 hex characters of the payload that stand for ``image_id``."""
    return hashlib.sha256(str(image_id).encode("utf-8")).hexdigest()[:6]


def make_payload(image_id: str, pixels: np.ndarray) -> str:
    """The short payload ``chexgen:<id hash 6 hex>:<pixel hash 6 hex>`` (48 bits) for an unmarked image."""
    return f"chexgen:{payload_id_part(image_id)}:{pixels_sha256(pixels)[:6]}"


def watermark_provenance(payload: str, pixels: np.ndarray) -> dict:
    """The ``watermark`` entry generation puts in an image's provenance (``pixels``: the unmarked image)."""
    import imwatermark

    return {"watermark": {"enabled": True, "payload": payload, "method": METHOD, "strength": STRENGTH,
                          "library": f"invisible-watermark {getattr(imwatermark, '__version__', '0.2.0')}",
                          "unmarked_sha256": pixels_sha256(pixels)}}


def _payload_bytes(payload: str) -> bytes:
    m = _PAYLOAD_RE.match(payload or "")
    if not m:
        raise ChexgenError(f"watermark payload {payload!r}: expected 'chexgen:<6 hex>:<6 hex>' (see make_payload)")
    return bytes.fromhex(m.group(1) + m.group(2))


def _codec():
    import reedsolo

    return reedsolo.RSCodec(PARITY)


def _bits(payload: str) -> list[int]:
    code = bytes(_codec().encode(_payload_bytes(payload)))
    return np.unpackbits(np.frombuffer(code, dtype=np.uint8)).astype(int).tolist()


def _n_bits() -> int:
    return 8 * (DATA_BYTES + PARITY)


def _resize(x: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    import cv2

    h, w = shape
    if x.shape == (h, w):
        return x.astype(np.float32, copy=True)
    shrink = h <= x.shape[0] and w <= x.shape[1]
    return cv2.resize(x.astype(np.float32), (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def _check(pixels: np.ndarray) -> np.ndarray:
    a = np.asarray(pixels)
    if a.ndim != 2:
        raise ChexgenError(f"watermark: expected a 2-D gray image, got shape {a.shape}")
    if a.dtype not in (np.uint8, np.uint16):
        raise ChexgenError(f"watermark: expected uint8 or uint16 pixels, got {a.dtype}")
    if min(a.shape) < 32:
        raise ChexgenError(f"watermark: image {a.shape} too small (at least 32 px a side)")
    return a


def _standardise(grid: np.ndarray) -> tuple[np.ndarray, float, float]:
    # Winsorised statistics: clipping the tails at the WINSOR-th percentiles makes them follow a linear
    # window change exactly even when the window saturates up to WINSOR % of the pixels at either end.
    lo, hi = np.percentile(grid, [WINSOR, 100 - WINSOR])
    w = np.clip(grid, lo, hi)
    mu, sd = float(w.mean()), float(w.std())
    sd = sd if sd > 1e-6 else 1.0
    return (grid - mu) / sd * REF_STD, mu, sd


def embed_watermark(pixels: np.ndarray, payload: str) -> np.ndarray:
    """Embed ``payload`` invisibly: (H, W) uint8 or uint16 gray in, same shape and dtype out."""
    a = _check(pixels)
    bits = _bits(payload)
    out = a
    # A second pass corrects the blocks that the first pass's rounding and clipping, or the small change of
    # the image's own statistics, left on the wrong side.
    for _ in range(PASSES):
        out = _embed_once(out, bits)
    return out


def _embed_once(a: np.ndarray, bits: list[int]) -> np.ndarray:
    import cv2
    from imwatermark.dwtDctSvd import EmbedDwtDctSvd

    x = a.astype(np.float64)
    z, mu, sd = _standardise(_resize(x, (GRID, GRID)).astype(np.float64))
    low = (2.0 * z).astype(np.float32)  # the Haar low band of a 2x larger image is twice the pixel mean
    marked = low.copy()
    EmbedDwtDctSvd(bits, wmLen=len(bits), scales=[STRENGTH, 0, 0], block=BLOCK).encode_frame(marked, STRENGTH)
    delta = (marked.astype(np.float64) - low) / 2.0 * sd / REF_STD  # back to pixel units of the grid
    # Nearest-neighbour upsampling keeps each grid cell's change constant over the pixels it covers, so the
    # detector's area average of the cell gets the change back exactly (up to rounding).
    up = cv2.resize(delta.astype(np.float32), (a.shape[1], a.shape[0]), interpolation=cv2.INTER_NEAREST)
    hi = np.iinfo(a.dtype).max
    return np.clip(np.round(x + up), 0, hi).astype(a.dtype)


def _votes(low: np.ndarray, n: int, mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Per-bit vote sums and counts over the grid's blocks (``mask``: which blocks may vote)."""
    from imwatermark.dwtDctSvd import EmbedDwtDctSvd

    coder = EmbedDwtDctSvd([], wmLen=n, scales=[STRENGTH, 0, 0], block=BLOCK)
    ones, count = np.zeros(n), np.zeros(n)
    nb = GRID // BLOCK
    for i in range(nb):
        for j in range(nb):
            if mask is not None and not mask[i, j]:
                continue
            k = (i * nb + j) % n  # the library's bit order: blocks row-major, bits cycled
            block = np.ascontiguousarray(low[i * BLOCK:(i + 1) * BLOCK, j * BLOCK:(j + 1) * BLOCK])
            ones[k] += coder.infer_dct_svd(block, STRENGTH)
            count[k] += 1
    return ones, count


def _decode(low: np.ndarray, mask: np.ndarray | None) -> tuple[str | None, float]:
    import reedsolo

    n = _n_bits()
    ones, count = _votes(low, n, mask)
    if (count == 0).any():
        return None, 0.0
    frac = ones / count
    conf = np.abs(2 * frac - 1)
    score = float(np.mean(conf))
    word = bytes(np.packbits((frac > 0.5).astype(np.uint8)))
    # Hard decoding first; then the least confident bytes as erasures (Reed-Solomon corrects twice as many
    # erasures as unknown errors), one more each try.
    byte_conf = conf.reshape(-1, 8).min(axis=1)
    order = [int(i) for i in np.argsort(byte_conf)]
    for n_erase in range(0, PARITY + 1):
        try:
            data = bytes(_codec().decode(word, erase_pos=order[:n_erase] or None)[0])
        except reedsolo.ReedSolomonError:
            continue
        return f"chexgen:{data[:3].hex()}:{data[3:].hex()}", score
    return None, score


def _clipped_blocks(grid: np.ndarray) -> np.ndarray:
    """Blocks that are flat at the image's darkest or brightest value: clipping kept the embedder from moving
    them, so they vote at chance and are left out."""
    nb = grid.shape[0] // BLOCK
    b = grid[: nb * BLOCK, : nb * BLOCK].reshape(nb, BLOCK, nb, BLOCK)
    bmin, bmax = b.min(axis=(1, 3)), b.max(axis=(1, 3))
    flat = (bmax - bmin) < 0.5
    return flat & ((bmax <= grid.min() + 0.5) | (bmin >= grid.max() - 0.5))


def _low_band(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    grid = _resize(x, (GRID, GRID)).astype(np.float64)
    z, _, _ = _standardise(grid)
    return (2.0 * z).astype(np.float32), ~_clipped_blocks(grid)


def detect_watermark(pixels: np.ndarray) -> WatermarkResult:
    """Look for a chexgen watermark in a (H, W) gray image (uint8 / uint16, or float in [0, 1])."""
    a = np.asarray(pixels)
    if a.ndim == 3 and a.shape[2] in (3, 4):
        a = a[..., :3].astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    if a.ndim != 2 or min(a.shape) < 32:
        raise ChexgenError(f"watermark: expected a 2-D gray image at least 32 px a side, got shape {a.shape}")
    low, mask = _low_band(a.astype(np.float64))
    payload, score = _decode(low, mask)
    found = payload is not None and score >= MIN_SCORE
    return WatermarkResult(found, payload if found else None, score)


def apply_watermark(pixels: np.ndarray, image_id: str, enabled: bool = True) -> tuple[np.ndarray, dict]:
    """What the generation writer does per image: marked pixels and the provenance entry to merge.

    With ``enabled=False`` (``--no-watermark``) the pixels are returned unchanged and the entry records
    the opt-out: ``{"watermark": {"enabled": False}}``.
    """
    if not enabled:
        return pixels, {"watermark": {"enabled": False}}
    payload = make_payload(image_id, pixels)
    return embed_watermark(pixels, payload), watermark_provenance(payload, pixels)
