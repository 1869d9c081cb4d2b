"""Is the confirmed winner really better? Paired statistics over the finalists' patients.

The winner is the finalist with the best confirmed objective (max or min per mode; nan never
wins; ties go to the earlier finalist). Against each other finalist, per metric, the
per-patient differences d = winner - other (patients in sorted name order) give a 95 %
bootstrap CI of their mean (scipy.stats.bootstrap resampling d, BCa; percentile where BCa
cannot compute, e.g. constant d) and a two-sided Wilcoxon signed-rank p (scipy.stats.wilcoxon,
its defaults). Verdict: "better" when the whole CI is above 0 and p < ALPHA, "worse" when it
is below 0 and p < ALPHA, else "within noise". Degenerate data never raises: all d zero gives
CI [0, 0] and p 1.0; one patient gives CI [d, d] and p 1.0 (no test is possible).
"""

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import scipy.stats

CONFIDENCE = 0.95
ALPHA = 0.05  # significance level for the Wilcoxon p-value
RESAMPLES = 9999
METRICS = ("volume_dice", "iou")  # per-patient scores compared; the first decides lines()
LABELS = {"volume_dice": "volume Dice", "iou": "IoU"}


@dataclass(frozen=True)
class Paired:
    """One paired comparison of the winner against another finalist on one metric."""

    metric: str
    n: int  # patients compared
    mean_difference: float  # mean over patients of (winner - other)
    ci_low: float
    ci_high: float
    p_value: float
    verdict: str  # "better" | "within noise" | "worse": the WINNER against the other

    def to_dict(self) -> dict:
        """The fields as a JSON-able dict (plain Python numbers)."""
        return asdict(self)


def verdict(ci_low: float, ci_high: float, p_value: float, alpha: float = ALPHA) -> str:
    """better when the whole interval is above 0 and p < alpha; worse when the whole interval is
    below 0 and p < alpha; otherwise within noise (nan anywhere is within noise)."""
    if p_value < alpha and ci_low > 0:
        return "better"
    if p_value < alpha and ci_high < 0:
        return "worse"
    return "within noise"


def differences(winner: Mapping[str, float], other: Mapping[str, float]) -> np.ndarray:
    """winner - other per patient, in sorted patient order (so the seeded resampling is
    reproducible whatever the dicts' order). ValueError on differing, no or non-finite patients."""
    if set(winner) != set(other):
        only_w, only_o = sorted(set(winner) - set(other)), sorted(set(other) - set(winner))
        raise ValueError(f"patients differ: only in winner {only_w}, only in other {only_o}")
    if not winner:
        raise ValueError("no patients to compare")
    names = sorted(winner)
    d = np.array([float(winner[p]) - float(other[p]) for p in names])
    if not np.all(np.isfinite(d)):
        bad = [p for p, x in zip(names, d, strict=True) if not np.isfinite(x)]
        raise ValueError(f"non-finite scores for patients {bad}")
    return d


def interval(d: np.ndarray, seed: int, confidence: float, resamples: int) -> tuple[float, float]:
    """Bootstrap CI of mean(d): BCa, else percentile (constant d, or BCa gave nan); each try
    with a fresh default_rng(seed), so a reader with the same seed gets the same numbers."""
    methods = ("BCa", "percentile") if np.ptp(d) > 0 else ("percentile",)
    for method in methods:
        ci = scipy.stats.bootstrap(
            (d,),
            np.mean,
            n_resamples=resamples,
            confidence_level=confidence,
            method=method,
            rng=np.random.default_rng(seed),
        ).confidence_interval
        if np.isfinite(ci.low) and np.isfinite(ci.high):
            break
    return float(ci.low), float(ci.high)


def paired(
    winner: Mapping[str, float],
    other: Mapping[str, float],
    metric: str,
    *,
    seed: int = 0,
    confidence: float = CONFIDENCE,
    alpha: float = ALPHA,
    resamples: int = RESAMPLES,
) -> Paired:
    """winner/other: per-patient scores keyed by patient name; they must hold the same patients
    (else ValueError naming the patients that differ)."""
    d = differences(winner, other)
    mean = float(np.mean(d))
    if len(d) < 2 or not np.any(d):  # one patient, or all zero: nothing to test, p 1.0
        return Paired(metric, len(d), mean, mean, mean, 1.0, "within noise")
    low, high = interval(d, seed, confidence, resamples)
    p = float(scipy.stats.wilcoxon(d).pvalue)
    return Paired(metric, len(d), mean, low, high, p, verdict(low, high, p, alpha))


def winner_index(finalists: list[dict], mode: str) -> int:
    """Index of the best finite objective (first on ties); ValueError when none is finite."""
    if mode not in ("max", "min"):
        raise ValueError(f"mode must be 'max' or 'min', not {mode!r}")
    sign = 1.0 if mode == "max" else -1.0
    best = None
    for i, f in enumerate(finalists):
        value = f.get("objective")
        value = float("nan") if value is None else float(value)
        if np.isfinite(value) and (best is None or sign * value > sign * best[1]):
            best = (i, value)
    if best is None:
        raise ValueError("no finalist has a finite objective")
    return best[0]


def _pairs(
    finalists: list[dict], w: int, metrics: Sequence[str], **kw: Any
) -> list[tuple[int, Paired]]:
    """(other's trial, Paired) per other finalist then per metric."""
    win = finalists[w]["patients"]
    out = []
    for i, f in enumerate(finalists):
        if i == w:
            continue
        for m in metrics:
            scores = (
                {p: s[m] for p, s in win.items()},
                {p: s[m] for p, s in f["patients"].items()},
            )
            out.append((f["trial"], paired(*scores, m, **kw)))
    return out


def compare(finalists: list[dict], objective: str, mode: str, *, seed: int = 0) -> dict:
    """The JSON-able comparison record of the confirmed finalists (see the module docstring)."""
    w = winner_index(finalists, mode)
    kw = {"seed": seed, "confidence": CONFIDENCE, "alpha": ALPHA, "resamples": RESAMPLES}
    return {
        "objective": objective,
        "mode": mode,
        **{k: v for k, v in kw.items() if k != "seed"},
        "seed": seed,
        "metrics": list(METRICS),
        "winner": finalists[w]["trial"],
        "finalists": [dict(f) for f in finalists],
        "comparisons": [
            {"trial": t, **p.to_dict()} for t, p in _pairs(finalists, w, METRICS, **kw)
        ],
    }


def recompute(record: dict) -> list[Paired]:
    """Every comparison again from the record's own finalists[*].patients and settings, in
    the record's order: what a reader of the artifact would do to check it."""
    finalists = record["finalists"]
    w = next(i for i, f in enumerate(finalists) if f["trial"] == record["winner"])
    kw = {k: record[k] for k in ("seed", "confidence", "alpha", "resamples")}
    return [p for _, p in _pairs(finalists, w, record["metrics"], **kw)]


def _p(p: float) -> str:
    """A p-value for a console line."""
    return "< 0.001" if p < 0.001 else f"{p:.2f}" if p >= 0.01 else f"{p:.3f}"


def lines(record: dict) -> list[str]:
    """The console lines: the winner and its objective, then per runner-up the first metric's
    mean difference, CI, Wilcoxon p and verdict (the other metrics stay in the record)."""
    win = next(f for f in record["finalists"] if f["trial"] == record["winner"])
    out = [
        f"confirmed winner: trial #{record['winner']} "
        f"({record['objective']} {float(win['objective']):.4f})"
    ]
    first = record["metrics"][0]
    level = f"{100 * record['confidence']:g}%"
    for c in record["comparisons"]:
        if c["metric"] != first:
            continue
        out.append(
            f"  vs trial #{c['trial']}: {LABELS.get(first, first)} {c['mean_difference']:+.3f} "
            f"[{level} CI {c['ci_low']:+.3f}, {c['ci_high']:+.3f}], "
            f"Wilcoxon p {_p(c['p_value'])}: {c['verdict']}"
        )
    return out
