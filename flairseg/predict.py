"""Predict masks with a trained model: `python -m flairseg.predict --checkpoint CKPT --input PATH --out DIR`.

PATH is a patient folder of `NAME_N.tif` slices (masks optional) or one slice TIF.
A cross-validated checkpoint (`flairseg.train --folds K --checkpoint`) predicts with
the ensemble of its K fold models: the mean of their probabilities.
For each slice it writes `NAME_N_pred.tif` (uint8 0/255 at the input's size) and
`NAME_N_overlay.png` (FLAIR, ground truth where there is one, probability heat map).
The slices of a folder are standardised together as one volume, as in training.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from flairseg import metrics as M
from flairseg.data import SlicePair, discover_patient, read_image, read_mask, resize_image
from flairseg.dataset import FLAIR, standardise, volume_stats
from flairseg.engine import load_checkpoint, model_from_checkpoint, pick_device, predict_probs
from flairseg.ensemble import Ensemble
from flairseg.errors import ArgumentParser, DataError, run_cli
from flairseg.viz import overlay_panels


def input_slices(path: Path) -> list[SlicePair]:
    if not path.exists():
        raise DataError(f"{path}: input does not exist")
    if path.is_dir():
        pairs = discover_patient(path, require_masks=False)
        if not pairs:
            raise DataError(f"{path}: no NAME_N.tif slices in this folder")
        return pairs
    if path.name.endswith(("_mask.tif", "_mask.tiff")):
        raise DataError(f"{path}: is a mask; give the image slice")
    mask = path.with_name(f"{path.stem}_mask{path.suffix}")
    return [SlicePair(path.parent.name, 0, path, mask if mask.exists() else None)]


def main(argv: Sequence[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m flairseg.predict", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--checkpoint", required=True, help="a checkpoint written by flairseg.train --checkpoint"
    )
    parser.add_argument("--input", required=True, help="a patient folder or one slice .tif")
    parser.add_argument("--out", required=True, help="folder for the masks and overlays")
    parser.add_argument("--device", help="cpu, cuda ... (default: cuda when present)")
    args = parser.parse_args(argv)

    config, model = model_from_checkpoint(load_checkpoint(args.checkpoint))
    pairs = input_slices(Path(args.input))
    # read and check every file before writing anything
    originals = [read_image(p.image) for p in pairs]
    masks = [
        read_mask(p.mask, im.shape[:2]) if p.mask else None
        for p, im in zip(pairs, originals, strict=True)
    ]
    size = config.image_size
    small = np.stack([resize_image(im, size) for im in originals])
    if config.channels == 1:
        small = small[..., FLAIR : FLAIR + 1]
    mean, std = volume_stats(small, np.zeros(len(small), np.int64))
    x = standardise(
        torch.from_numpy(small).permute(0, 3, 1, 2), torch.from_numpy(mean), torch.from_numpy(std)
    )

    device = pick_device(args.device)
    probs = predict_probs(model.to(device), x.to(device)).cpu()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    counts = []
    for pair, image, mask, prob in zip(pairs, originals, masks, probs, strict=True):
        h, w = image.shape[:2]
        full = F.interpolate(prob[None], size=(h, w), mode="bilinear", align_corners=False)[
            0, 0
        ].numpy()
        pred = (full >= 0.5).astype(np.uint8)
        stem = pair.image.stem
        Image.fromarray(pred * 255, "L").save(out / f"{stem}_pred.tif", format="TIFF")
        overlay_panels(image, full, mask).save(out / f"{stem}_overlay.png")
        if mask is not None:
            counts.append(M.confusion(torch.from_numpy(pred)[None], torch.from_numpy(mask)[None]))
    summary = f"wrote {len(pairs)} predicted masks and overlays to {out}"
    if isinstance(model, Ensemble):
        summary += f" (the mean probability of the {len(model.members)} fold models)"
    if counts:
        s = M.micro(M.Confusion.cat(counts))
        summary += f"; against the {len(counts)} ground-truth masks: dice {s['dice']:.3f} iou {s['iou']:.3f}"
    print(summary, file=sys.stdout)
    return 0


if __name__ == "__main__":
    run_cli(main)
