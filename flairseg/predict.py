"""Predict masks with a trained model: `python -m flairseg.predict --checkpoint CKPT --input PATH --out DIR`.

`--model models:/NAME@champion` (or `models:/NAME/VERSION`) instead of `--checkpoint`
predicts with a model a study registered in MLflow (see study.register).

PATH is a patient folder of `NAME_N.tif` slices (masks optional) or one slice TIF.
A cross-validated checkpoint (`flairseg.train --folds K --checkpoint`) predicts with
the ensemble of its K fold models: the mean of their probabilities.
For each slice it writes `NAME_N_pred.tif` (uint8 0/255 at the input's size) and
`NAME_N_overlay.png` (FLAIR, ground truth where there is one, probability heat map).
The slices of a folder are standardised together as one volume, as in training.

DIR is checked before inference: it must be new (its parent existing), or a folder holding
only such outputs (of earlier runs). It is written all or nothing: the outputs go to a
temporary folder beside DIR, which then takes DIR's place, keeping the earlier outputs of
other names; an error or Ctrl+C part way leaves DIR as it was.
"""

from __future__ import annotations

import io
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from flairseg import metrics as M
from flairseg.config import TrainConfig
from flairseg.data import SlicePair, discover_patient, read_image, read_mask, resize_image
from flairseg.dataset import FLAIR, standardise, volume_stats
from flairseg.engine import load_checkpoint, model_from_checkpoint, pick_device, predict_probs
from flairseg.ensemble import Ensemble
from flairseg.errors import ArgumentParser, ConfigError, DataError, FlairsegError, run_cli
from flairseg.files import atomic_folder
from flairseg.viz import overlay_panels

OUTPUTS = ("_pred.tif", "_overlay.png")  # what each slice NAME_N gets: NAME_N_pred.tif ...


def check_out(out: Path) -> None:
    """Refuse an --out that cannot take the outputs (see the module's doc), before inference."""
    name, real = f"--out {out}", Path(os.path.realpath(out))
    try:
        if out.exists() and not out.is_dir():
            raise DataError(f"{name}: is a file; give a folder")
        if not real.parent.is_dir():
            raise DataError(f"{name}: its parent folder {real.parent} does not exist")
        other = not_outputs(real)
    except OSError as err:
        raise DataError(f"{name}: cannot be read ({err.strerror or err})") from None
    if other:
        more = f" and {len(other) - 1} more" if other[1:] else ""
        raise DataError(
            f"{name}: holds {other[0]!r}{more}, which predict does not write; "
            "give a new folder, an empty one, or one of earlier predictions"
        )
    if real.is_dir() and not os.access(real, os.W_OK | os.X_OK):
        raise DataError(f"{name}: is not writable")
    try:  # the outputs are staged beside it: make (and remove) a folder there
        os.rmdir(tempfile.mkdtemp(prefix=f".{real.name}.", suffix=".tmp", dir=real.parent))
    except OSError as err:
        raise DataError(f"{name}: cannot write in {real.parent} ({err.strerror or err})") from None


def not_outputs(folder: Path) -> list[str]:
    """The names in a folder that are not predict's outputs (none if it does not exist)."""
    if not folder.is_dir():
        return []
    return [
        p.name
        for p in sorted(folder.iterdir())
        if p.is_symlink() or not p.is_file() or not p.name.endswith(OUTPUTS)
    ]


def load_model(path: str) -> tuple[TrainConfig, torch.nn.Module]:
    """The config and model (or fold ensemble) of a checkpoint; one line naming it if bad."""
    ckpt = load_checkpoint(path)
    try:
        return model_from_checkpoint(ckpt)
    except FlairsegError as err:
        raise ConfigError(f"{path}: {err}") from None


def fetch_model(uri: str, folder: str) -> str:
    """The checkpoint of a model URI, fetched into `folder` by the installed package that
    handles its scheme (entry point group `flairseg.model_uris`: flairseg-study's study
    layer handles `models:/`); flairseg itself knows no model registry."""
    from importlib.metadata import entry_points

    scheme = uri.partition(":")[0]
    found = [ep for ep in entry_points(group="flairseg.model_uris") if ep.name == scheme]
    if not found:
        raise ConfigError(
            f"--model {uri}: no installed package fetches {scheme}: URIs "
            "(give models:/NAME@ALIAS, with flairseg-study installed: pip install -e .)"
        )
    return found[0].load()(uri, folder)


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


def build_parser() -> ArgumentParser:
    """The command line's flags (the documentation's CLI reference is made from it)."""
    parser = ArgumentParser(prog="python -m flairseg.predict", description=__doc__.splitlines()[0])
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--checkpoint", help="a checkpoint written by flairseg.train --checkpoint")
    which.add_argument(
        "--model",
        metavar="URI",
        help="a registered model: models:/NAME@champion or models:/NAME/VERSION "
        "(the MLflow store: $MLFLOW_TRACKING_URI, else ./mlflow.db)",
    )
    parser.add_argument("--input", required=True, help="a patient folder or one slice .tif")
    parser.add_argument("--out", required=True, help="folder for the masks and overlays")
    parser.add_argument("--device", help="cpu, cuda ... (default: cuda when present)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)

    out = Path(args.out)
    check_out(out)
    if args.model:
        with tempfile.TemporaryDirectory(prefix="flairseg-model-") as folder:
            config, model = load_model(fetch_model(args.model, folder))
    else:
        config, model = load_model(args.checkpoint)
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
    try:
        with atomic_folder(out) as stage:
            counts = write_outputs(stage, pairs, originals, masks, probs)
    except OSError as err:
        raise DataError(
            f"--out {out}: writing the outputs failed ({err.strerror or err}); it is left as it was"
        ) from None
    summary = f"wrote {len(pairs)} predicted masks and overlays to {out}"
    if isinstance(model, Ensemble):
        summary += f" (the mean probability of the {len(model.members)} fold models)"
    if counts:
        s = M.micro(M.Confusion.cat(counts))
        summary += f"; against the {len(counts)} ground-truth masks: dice {s['dice']:.3f} iou {s['iou']:.3f}"
    print(summary, file=sys.stdout)
    return 0


def write_outputs(
    folder: Path,
    pairs: list[SlicePair],
    originals: list[np.ndarray],
    masks: list[np.ndarray | None],
    probs: torch.Tensor,
) -> list[M.Confusion]:
    """Write each slice's mask and overlay into `folder`; the confusion counts where a
    ground-truth mask exists."""
    counts = []
    for pair, image, mask, prob in zip(pairs, originals, masks, probs, strict=True):
        h, w = image.shape[:2]
        full = F.interpolate(prob[None], size=(h, w), mode="bilinear", align_corners=False)[
            0, 0
        ].numpy()
        pred = (full >= 0.5).astype(np.uint8)
        stem = pair.image.stem
        save_image(Image.fromarray(pred * 255, "L"), folder / f"{stem}_pred.tif", "TIFF")
        save_image(overlay_panels(image, full, mask), folder / f"{stem}_overlay.png", "PNG")
        if mask is not None:
            counts.append(M.confusion(torch.from_numpy(pred)[None], torch.from_numpy(mask)[None]))
    return counts


def save_image(image: Image.Image, path: Path, kind: str) -> None:
    """Encode in memory, then write: PIL's TIFF encoder drops a short write (a file size
    limit, a full disk) without an error, leaving a truncated file."""
    buffer = io.BytesIO()
    image.save(buffer, format=kind)
    path.write_bytes(buffer.getvalue())


if __name__ == "__main__":
    run_cli(main)
