"""Reading a kaggle_3m folder into arrays: discovery, checks, decoding, caching, splitting.

Layout: one folder per patient; in it `NAME_N.tif` (RGB uint8: pre-contrast, FLAIR,
post-contrast) and `NAME_N_mask.tif` (uint8, 0/255), N the slice number. Files beside
the patient folders (the real set's data.csv and README.md) are ignored.

Decoded, resized slices are cached as uint8 arrays in one .npz per data set and image
size, so a second load decodes no TIFF (flairseg.cache): it is written atomically, only
after every file decoded cleanly, and checked when read (shapes, mask values, checksum,
the data files' content); a damaged one is rebuilt after a one-line warning.
"""

from __future__ import annotations

import hashlib
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from flairseg.cache import cache_files, content_digest, read_arrays, write_arrays
from flairseg.errors import DataError

_SLICE = re.compile(r"^(?P<stem>.+)_(?P<num>\d+)(?P<mask>_mask)?\.tiff?$", re.IGNORECASE)


def cache_dir() -> Path:
    """Where decoded arrays and the synthetic default live: $FLAIRSEG_CACHE or ~/.cache/flairseg."""
    return Path(os.environ.get("FLAIRSEG_CACHE") or Path.home() / ".cache" / "flairseg")


@dataclass(frozen=True)
class SlicePair:
    patient: str
    number: int
    image: Path
    mask: Path | None


@dataclass(frozen=True)
class SliceSet:
    """Every slice of a data set at one size, patients in name order, slices by number.

    images (N, S, S, 3) uint8; masks (N, S, S) uint8 in {0, 1}; patient (N,) int index
    into `patients`; number (N,) the slice number N of the file name. `fingerprint`
    (names and sizes) is the data's identity; `content` also covers the files' bytes.
    """

    images: np.ndarray
    masks: np.ndarray
    patient: np.ndarray
    number: np.ndarray
    patients: tuple[str, ...]
    fingerprint: str
    image_size: int
    content: str = ""

    def __len__(self) -> int:
        return len(self.images)


def discover(root: str | os.PathLike, require_masks: bool = True) -> list[SlicePair]:
    """All slices under `root`, checked for pairing; fails naming the first bad file."""
    root = Path(root)
    if not root.exists():
        raise DataError(f"{root}: data folder does not exist")
    if not root.is_dir():
        raise DataError(f"{root}: is not a folder")
    pairs: list[SlicePair] = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        pairs.extend(discover_patient(folder, require_masks))
    if not pairs:
        raise DataError(f"{root}: no patient folders with NAME_N.tif slices (kaggle_3m layout)")
    return pairs


def discover_patient(folder: Path, require_masks: bool = True) -> list[SlicePair]:
    """The slices of one patient folder, ordered by slice number."""
    images: dict[int, Path] = {}
    masks: dict[int, Path] = {}
    for path in folder.iterdir():
        match = _SLICE.match(path.name)
        if not match or not path.is_file():
            continue
        (masks if match["mask"] else images)[int(match["num"])] = path
    for num, mask in sorted(masks.items()):
        if num not in images:
            raise DataError(f"{mask}: mask without its image {mask.name.replace('_mask', '')}")
    pairs = []
    for num in sorted(images):
        mask = masks.get(num)
        if mask is None and require_masks:
            image = images[num]
            raise DataError(f"{image}: image without mask {image.stem}_mask{image.suffix}")
        pairs.append(SlicePair(folder.name, num, images[num], mask))
    return pairs


def fingerprint(pairs: list[SlicePair], root: Path) -> str:
    """sha256 of every file's path relative to `root` and its size in bytes."""
    digest = hashlib.sha256()
    for pair in pairs:
        for path in (pair.image, pair.mask):
            if path is not None:
                digest.update(
                    f"{path.relative_to(root).as_posix()}\0{path.stat().st_size}\n".encode()
                )
    return digest.hexdigest()


def _decode_tiff(path: Path) -> tuple[str, np.ndarray]:
    """(PIL mode, pixels) of a TIFF, fully decoded: a truncated file fails here, naming it.

    PIL's warnings (a truncated header's "Corrupt EXIF data") are silenced: the error says it.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as im:
                im.load()
                return im.mode, np.asarray(im)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:
        raise DataError(f"{path}: unreadable TIFF ({err})") from None


def read_image(path: Path) -> np.ndarray:
    """An RGB uint8 slice (H, W, 3); fails naming the file if unreadable or of another kind."""
    mode, array = _decode_tiff(path)
    if mode != "RGB" or array.dtype != np.uint8:
        raise DataError(f"{path}: expected an RGB uint8 image, got mode {mode}")
    return array


def read_mask(path: Path, shape: tuple[int, int]) -> np.ndarray:
    """A binary mask (H, W) uint8 in {0, 1}; the file must hold only 0 and 255 (or 0 and 1)."""
    _, array = _decode_tiff(path)
    if array.ndim == 3:  # a mask saved as RGB: accept only if its channels agree
        if not (array == array[..., :1]).all():
            raise DataError(f"{path}: mask has {array.shape[2]} differing channels; expected one")
        array = array[..., 0]
    if array.shape != shape:
        raise DataError(
            f"{path}: mask is {array.shape[1]}x{array.shape[0]} but its image is {shape[1]}x{shape[0]}"
        )
    values = np.unique(array)
    if not (set(values.tolist()) <= {0, 255} or set(values.tolist()) <= {0, 1}):
        odd = [int(v) for v in values if v not in (0, 1, 255)][:3]
        raise DataError(f"{path}: mask is not binary (values {odd} besides 0 and 255)")
    return (array > 0).astype(np.uint8)


def resize_image(image: np.ndarray, size: int) -> np.ndarray:
    if image.shape[0] == size and image.shape[1] == size:
        return image
    return np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR))


def resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """Resize a {0,1} mask: bilinear on 0/255, then threshold at half, so thin parts survive."""
    if mask.shape[0] == size and mask.shape[1] == size:
        return mask
    soft = np.asarray(Image.fromarray(mask * 255).resize((size, size), Image.BILINEAR))
    return (soft >= 128).astype(np.uint8)


def decode(pairs: list[SlicePair], size: int) -> tuple[np.ndarray, np.ndarray]:
    """Read, check and resize every slice: images (N, S, S, 3), masks (N, S, S)."""
    images = np.empty((len(pairs), size, size, 3), np.uint8)
    masks = np.zeros((len(pairs), size, size), np.uint8)
    for i, pair in enumerate(pairs):
        image = read_image(pair.image)
        images[i] = resize_image(image, size)
        if pair.mask is not None:
            masks[i] = resize_mask(read_mask(pair.mask, image.shape[:2]), size)
    return images, masks


def load_slices(
    root: str | os.PathLike, image_size: int = 128, cache: Path | None = None
) -> SliceSet:
    """Every slice of the kaggle_3m folder `root` at `image_size`, from the cache when it can.

    `cache` is the cache folder (default `cache_dir()`); pass a folder to isolate runs.
    """
    root = Path(root)
    pairs = discover(root)
    fp = fingerprint(pairs, root)
    patients = tuple(sorted({p.patient for p in pairs}))
    patient_index = {name: i for i, name in enumerate(patients)}
    arrays_file, index_file = cache_files(cache or cache_dir(), fp, root, image_size)
    files = [  # discover's paths are root/patient/name
        (f"{pair.patient}/{path.name}", path)
        for pair in pairs
        for path in (pair.image, pair.mask)
        if path is not None
    ]
    content = content_digest(files, root, index_file)
    arrays = read_arrays(arrays_file, len(pairs), image_size, content)
    if arrays is None:
        arrays = decode(pairs, image_size)
        write_arrays(arrays_file, *arrays, content)
    return SliceSet(
        images=arrays[0],
        masks=arrays[1],
        patient=np.array([patient_index[p.patient] for p in pairs], np.int64),
        number=np.array([p.number for p in pairs], np.int64),
        patients=patients,
        fingerprint=fp,
        image_size=image_size,
        content=content,
    )
