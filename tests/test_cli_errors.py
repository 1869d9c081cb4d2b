"""Each bad input, run through the CLIs: exit 2, one line naming the culprit, no traceback, nothing written."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import run_cli
from tests.inproc import call_cli


def _first(folder: Path, pattern: str) -> Path:
    return sorted(folder.glob(f"*/{pattern}"))[0]


def _missing(d: Path) -> tuple[Path, str]:
    return d / "nowhere", "data folder does not exist"


def _empty(d: Path) -> tuple[Path, str]:
    empty = d.parent / "empty"
    empty.mkdir()
    (empty / "README.md").write_text("no patients here")
    return empty, "no patient folders"


def _image_without_mask(d: Path) -> tuple[Path, str]:
    mask = _first(d, "*_2_mask.tif")
    mask.unlink()
    return d, f"{mask.name.replace('_mask', '')}: image without mask"


def _mask_without_image(d: Path) -> tuple[Path, str]:
    image = _first(d, "*_2.tif")
    image.unlink()
    return d, "mask without its image"


def _unreadable(d: Path) -> tuple[Path, str]:
    image = _first(d, "*_1.tif")
    image.write_bytes(b"this is not a TIFF")
    return d, f"{image.name}: unreadable TIFF"


def _truncated(d: Path) -> tuple[Path, str]:
    image = _first(d, "*_3.tif")
    image.write_bytes(image.read_bytes()[:600])
    return d, f"{image.name}: unreadable TIFF"


def _mask_other_size(d: Path) -> tuple[Path, str]:
    mask = _first(d, "*_1_mask.tif")
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(mask, format="TIFF")
    return d, f"{mask.name}: mask is 16x16 but its image is 32x32"


def _non_binary_mask(d: Path) -> tuple[Path, str]:
    mask = _first(d, "*_1_mask.tif")
    values = np.zeros((32, 32), np.uint8)
    values[4:8, 4:8] = 128
    Image.fromarray(values).save(mask, format="TIFF")
    return d, f"{mask.name}: mask is not binary (values [128]"


CASES: dict[str, Callable[[Path], tuple[Path, str]]] = {
    "missing-folder": _missing,
    "empty-folder": _empty,
    "image-without-mask": _image_without_mask,
    "mask-without-image": _mask_without_image,
    "unreadable-tiff": _unreadable,
    "truncated-tiff": _truncated,
    "mask-of-another-size": _mask_other_size,
    "non-binary-mask": _non_binary_mask,
}


def assert_one_line_exit_2(result, expected: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert expected in lines[0], lines[0]


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_bad_data_through_train_cli(case: str, tiny_phantom: Path, tmp_path: Path) -> None:
    data, expected = CASES[case](tiny_phantom)
    out = tmp_path / "out"
    result = call_cli(  # in process (tests.inproc); test_bad_predict_inputs runs a real one
        "flairseg.train",
        "--data",
        str(data),
        "--image-size",
        "32",
        "--width",
        "4",
        "--epochs",
        "1",
        "--json",
        str(out / "scores.json"),
        "--checkpoint",
        str(out / "model.ckpt"),
    )
    assert_one_line_exit_2(result, expected)
    assert not out.exists()


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--model", "vit"], "unknown model 'vit'; choose one of: setr, unet"),
        (["--loss", "focal"], "unknown loss 'focal'; choose one of: bce, combo, dice"),
        (["--alpha", "1.5"], "alpha=1.5 is outside [0, 1]"),
        (["--model", "setr", "--num-cuts", "3"], "num_cuts=3 does not divide image_size=32"),
        (["--num-cuts", "4"], "num_cuts does not apply to model 'unet'"),
        (
            ["--val-fraction", "0.5", "--test-fraction", "0.4"],
            "split leaves a part empty: 3 patients",
        ),
        (["--epochs", "many"], "argument --epochs: invalid int value: 'many'"),
    ],
    ids=[
        "unknown-model",
        "unknown-loss",
        "bad-alpha",
        "setr-geometry",
        "foreign-knob",
        "empty-split",
        "not-a-number",
    ],
)
def test_bad_settings_through_train_cli(
    flags: list[str], expected: str, tiny_phantom: Path, tmp_path: Path
) -> None:
    json_file = tmp_path / "scores.json"
    result = call_cli(
        "flairseg.train",
        "--data",
        str(tiny_phantom),
        "--image-size",
        "32",
        "--epochs",
        "1",
        "--json",
        str(json_file),
        *flags,
    )
    assert_one_line_exit_2(result, expected)
    assert not json_file.exists()


def test_bad_phantom_arguments(tmp_path: Path) -> None:
    result = run_cli("flairseg.phantom", "--out", str(tmp_path / "p"), "--size", "8")
    assert_one_line_exit_2(result, "--size 8 is too small")
    assert not (tmp_path / "p").exists()


def test_bad_predict_inputs(tiny_phantom: Path, tmp_path: Path) -> None:
    not_a_checkpoint = tmp_path / "junk.ckpt"
    not_a_checkpoint.write_bytes(b"junk")
    out = tmp_path / "pred"
    result = run_cli(
        "flairseg.predict",
        "--checkpoint",
        str(not_a_checkpoint),
        "--input",
        str(tiny_phantom),
        "--out",
        str(out),
    )
    assert_one_line_exit_2(result, "junk.ckpt: not a flairseg checkpoint")
    result = run_cli(
        "flairseg.predict",
        "--checkpoint",
        str(tmp_path / "absent.ckpt"),
        "--input",
        str(tiny_phantom),
        "--out",
        str(out),
    )
    assert_one_line_exit_2(result, "absent.ckpt: checkpoint does not exist")
    assert not out.exists()
