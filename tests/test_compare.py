"""study.compare: the winner by objective, paired per-patient statistics straight from scipy."""

import json
import math

import numpy as np
import pytest
import scipy.stats

from study import compare as C

PATIENTS = [f"TCGA_{i:02d}" for i in range(20)]


def scores(dice: np.ndarray, iou: np.ndarray | None = None) -> dict:
    """{patient: {"volume_dice", "iou"}} from per-patient arrays (iou defaults to 0.85 dice)."""
    iou = 0.85 * dice if iou is None else iou
    return {
        p: {"volume_dice": float(d), "iou": float(i)}
        for p, d, i in zip(PATIENTS, dice, iou, strict=True)
    }


def finalist(trial: int, objective: float, dice: np.ndarray, **extra: object) -> dict:
    return {"trial": trial, "objective": objective, "patients": scores(dice), **extra}


BASE = np.random.default_rng(1).uniform(0.6, 0.8, len(PATIENTS))
NOISE = np.random.default_rng(2).normal(0.0, 0.01, len(PATIENTS))
HALF = np.random.default_rng(3).uniform(0.01, 0.05, len(PATIENTS) // 2)
SYMMETRIC = np.concatenate([HALF, -HALF])  # differences that sum to exactly zero, in pairs


def study_record() -> dict:
    """Trial 3 wins on val_iou: clearly better than 5, tied with 7, worse per patient than 9."""
    return C.compare(
        [
            finalist(5, 0.80, BASE, config={"lr": 1e-3}),
            finalist(3, 0.83, BASE + 0.1 + NOISE, config={"lr": 3e-4}),
            finalist(7, 0.82, BASE + 0.1 + NOISE - SYMMETRIC),
            finalist(9, 0.81, BASE + 0.2),
        ],
        "val_iou",
        "max",
        seed=7,
    )


def by_trial(record: dict, metric: str = "volume_dice") -> dict:
    return {c["trial"]: c for c in record["comparisons"] if c["metric"] == metric}


def test_verdicts_better_within_noise_worse() -> None:
    record = study_record()
    assert record["winner"] == 3
    dice = by_trial(record)
    assert dice[5]["verdict"] == "better" and dice[5]["ci_low"] > 0
    assert dice[5]["mean_difference"] == pytest.approx(0.1 + NOISE.mean())
    assert dice[7]["verdict"] == "within noise"
    assert dice[7]["ci_low"] < 0 < dice[7]["ci_high"]
    assert dice[9]["verdict"] == "worse" and dice[9]["ci_high"] < 0
    assert [(c["trial"], c["metric"]) for c in record["comparisons"]] == [
        (t, m) for t in (5, 7, 9) for m in C.METRICS
    ]
    assert all(c["n"] == len(PATIENTS) for c in record["comparisons"])


def test_identical_scores_are_within_noise() -> None:
    record = C.compare([finalist(1, 0.5, BASE), finalist(2, 0.4, BASE)], "val_iou", "max")
    for c in record["comparisons"]:
        assert (c["mean_difference"], c["ci_low"], c["ci_high"]) == (0.0, 0.0, 0.0)
        assert (c["p_value"], c["verdict"]) == (1.0, "within noise")


def test_statistics_are_scipys_own() -> None:
    record = study_record()
    fins = {f["trial"]: f["patients"] for f in record["finalists"]}
    win = fins[record["winner"]]
    for c in record["comparisons"]:
        other, m = fins[c["trial"]], c["metric"]
        d = np.array([win[p][m] - other[p][m] for p in sorted(win)])
        ci = scipy.stats.bootstrap(
            (d,),
            np.mean,
            n_resamples=record["resamples"],
            confidence_level=record["confidence"],
            method="BCa",
            rng=np.random.default_rng(record["seed"]),
        ).confidence_interval
        assert c["ci_low"] == pytest.approx(ci.low, abs=1e-12, rel=0)
        assert c["ci_high"] == pytest.approx(ci.high, abs=1e-12, rel=0)
        p = scipy.stats.wilcoxon(d).pvalue
        assert c["p_value"] == pytest.approx(p, abs=1e-12, rel=0)
        assert c["mean_difference"] == pytest.approx(d.mean(), abs=1e-12, rel=0)
        assert c["verdict"] == C.verdict(ci.low, ci.high, p)


def test_constant_nonzero_difference_uses_percentile_and_wilcoxon() -> None:
    w = {p: 0.9 for p in PATIENTS}
    o = {p: 0.8 for p in PATIENTS}
    r = C.paired(w, o, "volume_dice", seed=0)
    d = np.full(len(PATIENTS), 0.9 - 0.8)
    assert r.ci_low == r.ci_high == pytest.approx(0.1)
    assert r.p_value == pytest.approx(scipy.stats.wilcoxon(d).pvalue, abs=1e-12, rel=0)
    assert r.verdict == "better"


def test_one_patient_and_zero_differences() -> None:
    one = C.paired({"a": 0.9}, {"a": 0.7}, "iou")
    assert (one.n, one.p_value, one.verdict) == (1, 1.0, "within noise")
    assert one.ci_low == one.ci_high == one.mean_difference == pytest.approx(0.2)
    zero = C.paired({"a": 0.5, "b": 0.6}, {"b": 0.6, "a": 0.5}, "iou")
    assert zero == C.Paired("iou", 2, 0.0, 0.0, 0.0, 1.0, "within noise")


def test_mismatched_patients_raise_naming_them() -> None:
    with pytest.raises(ValueError, match=r"only in winner \['b'\], only in other \['c'\]"):
        C.paired({"a": 0.5, "b": 0.6}, {"a": 0.5, "c": 0.6}, "iou")
    with pytest.raises(ValueError, match="no patients"):
        C.paired({}, {}, "iou")
    with pytest.raises(ValueError, match="non-finite"):
        C.paired({"a": math.nan, "b": 0.1}, {"a": 0.5, "b": 0.6}, "iou")


def test_verdict_rule() -> None:
    assert C.verdict(0.01, 0.05, 0.01) == "better"
    assert C.verdict(-0.05, -0.01, 0.01) == "worse"
    assert C.verdict(0.01, 0.05, 0.2) == "within noise"
    assert C.verdict(-0.01, 0.05, 0.01) == "within noise"
    assert C.verdict(math.nan, math.nan, math.nan) == "within noise"


@pytest.mark.parametrize(
    ("mode", "objectives", "winner"),
    [
        ("max", [0.7, math.nan, 0.9, 0.9], 2),
        ("min", [0.7, math.nan, 0.9, 0.7], 0),
        ("min", [math.nan, 0.3, 0.2, math.inf], 2),
        ("max", [math.nan, 0.1], 1),
    ],
)
def test_winner_by_mode_nan_never_wins(mode: str, objectives: list, winner: int) -> None:
    fins = [finalist(10 + i, v, BASE + 0.01 * i) for i, v in enumerate(objectives)]
    record = C.compare(fins, "val_loss", mode)
    assert record["winner"] == 10 + winner
    assert len(record["comparisons"]) == len(C.METRICS) * (len(fins) - 1)


def test_no_finite_objective_one_finalist_and_bad_mode() -> None:
    with pytest.raises(ValueError, match="finite objective"):
        C.compare([finalist(1, math.nan, BASE), finalist(2, math.nan, BASE)], "val_iou", "max")
    with pytest.raises(ValueError, match="mode"):
        C.compare([finalist(1, 0.5, BASE)], "val_iou", "best")
    assert C.compare([finalist(1, 0.5, BASE)], "val_iou", "min")["comparisons"] == []


def test_record_is_json_and_recomputes() -> None:
    fins = [
        finalist(5, 0.80, BASE, config={"lr": 1e-3}),
        finalist(3, 0.83, BASE + 0.1 + NOISE),
    ]
    record = C.compare(fins, "val_iou", "max", seed=7)
    assert record["finalists"] == fins and record["finalists"] is not fins
    assert {k: record[k] for k in ("objective", "mode", "seed", "winner")} == {
        "objective": "val_iou",
        "mode": "max",
        "seed": 7,
        "winner": 3,
    }
    assert (record["confidence"], record["alpha"], record["resamples"]) == (0.95, 0.05, 9999)
    assert record["metrics"] == ["volume_dice", "iou"]
    loaded = json.loads(json.dumps(record))
    assert loaded == record
    again = C.recompute(loaded)
    assert [
        {"trial": c["trial"], **p.to_dict()}
        for c, p in zip(loaded["comparisons"], again, strict=True)
    ] == (loaded["comparisons"])


def test_lines() -> None:
    record = study_record()
    out = C.lines(record)
    assert out[0] == "confirmed winner: trial #3 (val_iou 0.8300)"
    assert len(out) == 4 and [s.split(":")[0] for s in out[1:]] == [
        f"  vs trial #{t}" for t in (5, 7, 9)
    ]
    c = by_trial(record)[7]
    assert out[2] == (
        f"  vs trial #7: volume Dice {c['mean_difference']:+.3f} [95% CI {c['ci_low']:+.3f}, "
        f"{c['ci_high']:+.3f}], Wilcoxon p 1.00: within noise"
    )
    assert out[1].endswith(": better") and "Wilcoxon p < 0.001" in out[1]
    assert "IoU" not in " ".join(out)
