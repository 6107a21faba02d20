"""Synthetic institution presets: who the patients are, how the images are taken, how reports read.

Findings are drawn from a small latent-cause model, so that they co-occur the way they do in a
real chest X-ray population (heart failure brings cardiomegaly, edema and effusions together;
infection brings pneumonia, consolidation and opacity; ICU patients have support devices,
atelectasis and pneumothoraces; ...). Each study switches on each cause independently with the
preset's probability; a finding is then present with the noisy-OR

    P(finding | causes) = 1 - (1 - leak[f]) * prod_{active c} (1 - WEIGHTS[c][f])

`expected_rates` computes the exact marginals and pair co-occurrences by enumerating the 2^5
cause combinations; docs/synthetic.md prints the table for each preset.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from mixvlp_ds.labels import CHEXPERT14

PATHOLOGIES = tuple(f for f in CHEXPERT14 if f not in ("No Finding", "Support Devices"))
DRAWN = PATHOLOGIES + ("Support Devices",)  # the 13 findings that have an image signature

CAUSES = ("heart_failure", "infection", "critical_care", "neoplasm", "trauma")

# P(finding present | cause active) beyond the leak; a missing entry is 0.
WEIGHTS: dict[str, dict[str, float]] = {
    "heart_failure": {
        "Cardiomegaly": 0.70,
        "Edema": 0.60,
        "Pleural Effusion": 0.55,
        "Enlarged Cardiomediastinum": 0.30,
        "Atelectasis": 0.15,
        "Lung Opacity": 0.20,
    },
    "infection": {
        "Pneumonia": 0.55,
        "Consolidation": 0.40,
        "Lung Opacity": 0.75,
        "Pleural Effusion": 0.20,
        "Atelectasis": 0.20,
    },
    "critical_care": {
        "Support Devices": 0.92,
        "Atelectasis": 0.35,
        "Pleural Effusion": 0.25,
        "Edema": 0.15,
        "Pneumothorax": 0.10,
        "Lung Opacity": 0.15,
    },
    "neoplasm": {
        "Lung Lesion": 0.80,
        "Pleural Effusion": 0.30,
        "Pleural Other": 0.25,
        "Atelectasis": 0.20,
        "Enlarged Cardiomediastinum": 0.20,
    },
    "trauma": {"Fracture": 0.65, "Pneumothorax": 0.35, "Lung Opacity": 0.20, "Pleural Other": 0.10},
}

# Background rate of each finding with no cause active.
LEAK: dict[str, float] = {
    "Atelectasis": 0.07,
    "Cardiomegaly": 0.06,
    "Consolidation": 0.015,
    "Edema": 0.01,
    "Enlarged Cardiomediastinum": 0.02,
    "Fracture": 0.015,
    "Lung Lesion": 0.015,
    "Lung Opacity": 0.05,
    "Pleural Effusion": 0.04,
    "Pleural Other": 0.02,
    "Pneumonia": 0.01,
    "Pneumothorax": 0.015,
    "Support Devices": 0.05,
}


@dataclass(frozen=True)
class Acquisition:
    """Ranges (lo, hi) drawn uniformly per image: how this institution's machines take pictures."""

    sizes: tuple[int, ...] = (384, 448)  # square original side lengths, drawn per image
    exposure: tuple[float, float] = (0.8, 1.2)  # scales attenuation before the film curve
    contrast: tuple[float, float] = (0.8, 1.15)
    gamma: tuple[float, float] = (0.8, 1.2)
    brightness: tuple[float, float] = (-0.06, 0.06)
    noise: tuple[float, float] = (0.02, 0.045)  # detector noise std, on the 0..1 scale
    fov: tuple[float, float] = (1.2, 1.45)  # half the field of view, in body units
    shift: float = 0.09  # max centring error, in body units
    marker: bool = True  # a burnt-in side marker in one corner


@dataclass(frozen=True)
class Preset:
    """One synthetic institution's role, population, acquisition and report style."""

    name: str
    institution: str  # default institution name
    paired: bool  # has reports
    splits: tuple[float, float, float]  # default (train, val, test) shares, by patient
    cause_rates: dict[str, float]
    acquisition: Acquisition = field(default_factory=Acquisition)
    report_style: str = "mimic"
    ap_rate: float = 0.3  # AP (portable) views; ICU patients are mostly AP
    studies_per_patient: tuple[float, float, float] = (0.5, 0.3, 0.2)  # P(1), P(2), P(3)
    female_rate: float = 0.5


PRESETS: dict[str, Preset] = {
    "mimic-like": Preset(
        name="mimic-like",
        institution="synth-mimic",
        paired=True,
        splits=(0.9, 0.05, 0.05),
        cause_rates={
            "heart_failure": 0.20,
            "infection": 0.16,
            "critical_care": 0.25,
            "neoplasm": 0.07,
            "trauma": 0.05,
        },
        acquisition=Acquisition(sizes=(384, 448)),
        report_style="mimic",
        ap_rate=0.35,
    ),
    "nih-like": Preset(
        name="nih-like",
        institution="synth-nih",
        paired=False,
        splits=(0.9, 0.05, 0.05),
        cause_rates={
            "heart_failure": 0.14,
            "infection": 0.14,
            "critical_care": 0.15,
            "neoplasm": 0.10,
            "trauma": 0.04,
        },
        acquisition=Acquisition(
            sizes=(512,),
            exposure=(0.85, 1.05),
            contrast=(0.8, 1.0),
            gamma=(1.0, 1.3),
            brightness=(0.0, 0.06),
            noise=(0.01, 0.025),
            fov=(1.30, 1.50),
            shift=0.08,
        ),
        report_style="none",
        ap_rate=0.25,
        studies_per_patient=(0.4, 0.3, 0.3),
    ),
    "openi-like": Preset(
        name="openi-like",
        institution="synth-openi",
        paired=True,
        splits=(0.2, 0.1, 0.7),
        cause_rates={
            "heart_failure": 0.12,
            "infection": 0.10,
            "critical_care": 0.08,
            "neoplasm": 0.06,
            "trauma": 0.05,
        },
        acquisition=Acquisition(
            sizes=(256, 320),
            exposure=(1.0, 1.2),
            contrast=(1.0, 1.25),
            gamma=(0.75, 0.95),
            brightness=(-0.06, 0.0),
            noise=(0.02, 0.04),
            fov=(1.20, 1.32),
            marker=False,
        ),
        report_style="openi",
        ap_rate=0.1,
        studies_per_patient=(0.7, 0.2, 0.1),
    ),
}


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown synthetic preset {name!r}; choose one of {sorted(PRESETS)}") from None


def finding_probs(active: dict[str, bool]) -> dict[str, float]:
    """P(each drawn finding present | which causes are active): the noisy-OR above."""
    out = {}
    for f in DRAWN:
        p_absent = 1.0 - LEAK[f]
        for c in CAUSES:
            if active[c]:
                p_absent *= 1.0 - WEIGHTS[c].get(f, 0.0)
        out[f] = 1.0 - p_absent
    return out


def expected_rates(preset: Preset) -> tuple[dict[str, float], dict[tuple[str, str], float]]:
    """Exact P(finding present) and P(both present) for every pair, under the preset's causes.

    "No Finding" (none of the 12 pathologies present; devices do not count, as in CheXpert) is
    included in the marginals. These are rates of the *true* image content; report labels add
    hedging and omissions on top (see reports.py).
    """
    marg = {f: 0.0 for f in DRAWN + ("No Finding",)}
    pair = {(a, b): 0.0 for a, b in itertools.combinations(DRAWN, 2)}
    for bits in itertools.product((False, True), repeat=len(CAUSES)):
        active = dict(zip(CAUSES, bits, strict=True))
        w = 1.0
        for c, on in active.items():
            w *= preset.cause_rates[c] if on else 1.0 - preset.cause_rates[c]
        p = finding_probs(active)
        for f in DRAWN:
            marg[f] += w * p[f]
        none = 1.0
        for f in PATHOLOGIES:
            none *= 1.0 - p[f]
        marg["No Finding"] += w * none
        for a, b in pair:  # findings are independent given the causes
            pair[(a, b)] += w * p[a] * p[b]
    return marg, pair
