"""predict against faults and hostile input: a bad --out, a failure part way, a bad checkpoint.

Each case ends in one line and exit 2 (or 130 for Ctrl+C), with --out as it was before.
"""

from __future__ import annotations

import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from flairseg import predict
from flairseg.checkpoint import CHECKPOINT_FORMAT, write_checkpoint
from flairseg.config import TrainConfig
from flairseg.errors import FlairsegError
from tests.conftest import REPO
from tests.inproc import call_cli

SMALL = dict(image_size=32, width=4)


def tiny_state(**config: Any) -> dict[str, Any]:
    """A checkpoint dict as training writes one, of an untrained tiny U-Net."""
    settings = TrainConfig(**{**SMALL, **config})
    torch.manual_seed(0)
    model = settings.build_model().state_dict()
    return {"format": CHECKPOINT_FORMAT, "config": settings.to_dict(), "epoch": 1, "model": model}


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_checkpoint(tiny_state(), tmp_path_factory.mktemp("ckpt") / "tiny.ckpt")


def predict_argv(ckpt: Path, data: Path, out: Path) -> list[str]:
    """`flairseg.predict`'s flags for one checkpoint, input and output, on the CPU."""
    return ["--checkpoint", str(ckpt), "--input", str(data), "--out", str(out), "--device", "cpu"]


def run_predict(
    ckpt: Path, data: Path, out: Path, *, fsize: int = 0, memory: int = 0
) -> subprocess.CompletedProcess:
    """`python -m flairseg.predict` as a user runs it; `fsize`/`memory`: the largest file it
    may write and its address space, in bytes (a real limit from the OS)."""

    def limits() -> None:
        for kind, value in ((resource.RLIMIT_FSIZE, fsize), (resource.RLIMIT_AS, memory)):
            if value:
                resource.setrlimit(kind, (value, resource.getrlimit(kind)[1]))

    argv = predict_argv(ckpt, data, out)
    return subprocess.run(
        [sys.executable, "-m", "flairseg.predict", *argv],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
        preexec_fn=limits,
    )


def assert_one_line_exit_2(result: subprocess.CompletedProcess, *expected: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert all(text in lines[0] for text in expected), lines[0]


def snapshot(folder: Path) -> dict[str, bytes] | None:
    """Every file of a folder with its bytes; None if it does not exist."""
    if not folder.exists():
        return None
    return {
        str(p.relative_to(folder)): p.read_bytes() if p.is_file() else None
        for p in sorted(folder.rglob("*"))
    }


def holds_a_file(folder: Path) -> bool:
    """Whether a folder under `folder` holds a file yet (folders may come and go meanwhile)."""
    try:
        return any(any(d.iterdir()) for d in folder.iterdir() if d.is_dir())
    except FileNotFoundError:
        return False


def patient_of(data: Path, index: int = 0) -> Path:
    return sorted(p for p in data.iterdir() if p.is_dir())[index]


def enlarge(image: Path, factor: int) -> None:
    """Make a slice and its mask `factor` times larger (its outputs grow alike)."""
    for path in (image, image.with_name(f"{image.stem}_mask.tif")):
        im = Image.open(path)
        im.resize((im.width * factor, im.height * factor), Image.NEAREST).save(path, format="TIFF")


def bad_out(case: str, tmp_path: Path) -> tuple[Path, str]:
    """An --out that predict cannot use, and what the error names."""
    if case == "file":
        (tmp_path / "pred").write_text("my notes")
        return tmp_path / "pred", "is a file"
    if case == "no parent":
        return tmp_path / "missing" / "pred", "parent folder"
    if case == "foreign files":
        (tmp_path / "pred").mkdir()
        (tmp_path / "pred" / "notes.txt").write_text("mine")
        return tmp_path / "pred", "holds 'notes.txt'"
    if os.geteuid() != 0:  # case "unwritable"
        (tmp_path / "locked").mkdir(mode=0o555)
        return tmp_path / "locked" / "pred", "cannot write in"
    if not Path("/sys").is_dir():  # root writes anywhere a mode allows; not in /sys
        pytest.skip("root, and no /sys to find an unwritable folder in")
    return Path("/sys/flairseg-pred"), "cannot write in /sys"


@pytest.mark.parametrize("case", ["file", "no parent", "foreign files", "unwritable"])
def test_bad_out_is_one_line_before_inference(
    case: str, ckpt: Path, tiny_phantom: Path, tmp_path: Path
) -> None:
    out, expected = bad_out(case, tmp_path)
    before = snapshot(tmp_path)
    argv = predict_argv(ckpt, patient_of(tiny_phantom), out)
    # in process (tests.inproc): no OS limit wanted, refused before any inference
    result = call_cli("flairseg.predict", *argv, cwd=REPO)
    assert_one_line_exit_2(result, f"--out {out}", expected)
    assert snapshot(tmp_path) == before and not Path("/sys/flairseg-pred").exists()


@pytest.mark.slow
@pytest.mark.parametrize("earlier", [False, True], ids=["new out", "out of earlier outputs"])
def test_a_failure_part_way_leaves_out_as_it_was(
    earlier: bool, ckpt: Path, tiny_phantom: Path, tmp_path: Path
) -> None:
    (tmp_path / "results").mkdir()
    out = tmp_path / "results" / "pred"
    patient = patient_of(tiny_phantom)
    slices = sorted(patient.glob("*_[0-9].tif"))
    assert len(slices) == 3
    if earlier:  # outputs of an earlier run: this patient's and another's
        out.mkdir()
        for image in [*slices, *patient_of(tiny_phantom, 1).glob("*_[0-9].tif")]:
            for suffix in ("_pred.tif", "_overlay.png"):
                (out / f"{image.stem}{suffix}").write_text(f"earlier {image.stem}")
    enlarge(slices[-1], 8)  # its mask: 256 x 256 = 64 KiB, over the file size allowed below
    before = snapshot(out)
    result = run_predict(ckpt, patient, out, fsize=32 * 1024)
    assert_one_line_exit_2(result, f"--out {out}", "File too large", "left as it was")
    assert snapshot(out) == before
    assert sorted(p.name for p in (tmp_path / "results").iterdir()) == (["pred"] if earlier else [])


@pytest.mark.slow
def test_ctrl_c_part_way_leaves_nothing(ckpt: Path, tiny_phantom: Path, tmp_path: Path) -> None:
    source = patient_of(tiny_phantom)
    patient = tmp_path / source.name
    patient.mkdir()
    first = sorted(source.glob("*_[0-9].tif"))[0]
    for num in range(1, 41):  # 40 slices of 256 px: a second or more of writing
        for suffix in (".tif", "_mask.tif"):
            shutil.copy(
                first.with_name(first.stem + suffix), patient / f"{source.name}_{num}{suffix}"
            )
        enlarge(patient / f"{source.name}_{num}.tif", 8)
    (tmp_path / "results").mkdir()
    out = tmp_path / "results" / "pred"
    argv = ["--checkpoint", str(ckpt), "--input", str(patient), "--out", str(out)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "flairseg.predict", *argv, "--device", "cpu"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 600  # an outer limit: a busy machine imports torch slowly
        while not holds_a_file(tmp_path / "results"):
            assert proc.poll() is None and time.monotonic() < deadline, "no output was written"
            time.sleep(0.002)
        proc.send_signal(signal.SIGINT)  # the first output file is written: Ctrl+C
        _, stderr = proc.communicate(timeout=300)
    finally:
        proc.kill()
    assert proc.returncode == 130 and stderr.strip() == "interrupted", stderr
    assert list((tmp_path / "results").iterdir()) == []


def test_outputs_of_earlier_runs_stay_and_same_names_are_replaced(
    ckpt: Path, tiny_phantom: Path, tmp_path: Path
) -> None:
    out = tmp_path / "pred"
    a, b = patient_of(tiny_phantom, 0), patient_of(tiny_phantom, 1)

    def run(patient: Path) -> int:
        return predict.main(["--checkpoint", str(ckpt), "--input", str(patient), "--out", str(out)])

    assert run(a) == 0 and run(b) == 0
    first = snapshot(out)
    assert first is not None and len(first) == 12  # 3 slices x 2 files for each patient
    stale = out / f"{sorted(a.glob('*_[0-9].tif'))[0].stem}_pred.tif"
    stale.write_text("stale")
    assert run(a) == 0
    assert snapshot(out) == first  # the stale file replaced, b's outputs kept
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def crafted(state: dict[str, Any], case: str) -> Any:
    """A checkpoint payload damaged or crafted in one way."""
    if case == "no config":
        return {k: v for k, v in state.items() if k != "config"}
    if case == "config a list":
        return {**state, "config": [1, 2]}
    if case == "no weights":
        return {k: v for k, v in state.items() if k != "model"}
    if case == "weights of another width":
        return {**state, "model": tiny_state(width=8)["model"]}
    if case == "a weight missing":
        return {**state, "model": dict(list(state["model"].items())[1:])}
    if case == "a weight not a tensor":
        return {**state, "model": {**state["model"], "head.bias": [0.0]}}
    if case == "folds not a list":
        return {**state, "folds": "fold"}
    if case == "a fold without weights":
        return {**state, "folds": [{"model": state["model"]}, {"epoch": 1}]}
    if case == "sizes past int64":
        return {**state, "config": {**state["config"], "width": 2**40}}
    if case == "a list":
        return [state]
    if case == "another format":
        return {**state, "format": 99}
    raise AssertionError(case)


BAD_STATES = {
    "no config": "holds no config",
    "config a list": "config is a list, not settings",
    "no weights": "checkpoint holds no model weights",
    "weights of another width": "'down.0.0.weight' is [8, 3, 3, 3], the model's is [4, 3, 3, 3]",
    "a weight missing": "the weights do not fit its config's model unet (width=4): no ",
    "a weight not a tensor": "weight 'head.bias' is a list, not a tensor",
    "folds not a list": "folds are not a list",
    "a fold without weights": "fold 2 holds no model weights",
    "sizes past int64": "checkpoint's config: model unet (width=1099511627776): Storage size",
    "a list": "not a flairseg checkpoint",
    "another format": "not a flairseg checkpoint",
}


@pytest.mark.parametrize("case", list(BAD_STATES))
def test_a_bad_checkpoint_is_one_error_naming_it(
    case: str, tiny_phantom: Path, tmp_path: Path
) -> None:
    path = tmp_path / "bad.ckpt"
    torch.save(crafted(tiny_state(), case), path)
    out = tmp_path / "pred"
    argv = ["--checkpoint", str(path), "--input", str(patient_of(tiny_phantom)), "--out", str(out)]
    with pytest.raises(FlairsegError) as caught:
        predict.main(argv)
    message = str(caught.value)
    assert "\n" not in message and message.startswith(f"{path}: "), message
    assert BAD_STATES[case] in message, message
    assert not out.exists()


@pytest.mark.parametrize("kind", ["folder", "empty file"])
def test_a_checkpoint_that_is_no_file_of_torch(
    kind: str, tiny_phantom: Path, tmp_path: Path
) -> None:
    path = tmp_path / "bad.ckpt"
    path.mkdir() if kind == "folder" else path.write_bytes(b"")
    argv = ["--checkpoint", str(path), "--input", str(patient_of(tiny_phantom))]
    with pytest.raises(
        FlairsegError,
        match="is a folder, not a checkpoint file"
        if kind == "folder"
        else "not a flairseg checkpoint",
    ):
        predict.main([*argv, "--out", str(tmp_path / "pred")])


ABSURD = {  # config settings crafted into a checkpoint of tiny weights, and the refusal
    "unet width 16384": (dict(width=16384), "model unet (width=16384) would hold 454.0 GiB"),
    "setr of one huge patch": (
        dict(model="setr", image_size=1024, num_cuts=1, width=None),
        "model setr (num_cuts=1) would hold 3.0 GiB of weights; the cap is 2 GiB",
    ),
    "image size 2**20": (dict(image_size=2**20), "image_size=1048576 must be at most 1024"),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(ABSURD))
def test_an_absurd_model_is_refused_before_it_is_allocated(
    case: str, tiny_phantom: Path, tmp_path: Path
) -> None:
    settings, expected = ABSURD[case]
    state = tiny_state()
    path = write_checkpoint(
        {**state, "config": {**state["config"], **settings}}, tmp_path / "x.ckpt"
    )
    out = tmp_path / "pred"
    # 3 GiB of address space: building such a model would fail (not take the machine's memory)
    result = run_predict(path, patient_of(tiny_phantom), out, memory=3 * 2**30)
    assert_one_line_exit_2(result, f"{path}: checkpoint's config: ", expected)
    assert not out.exists()
