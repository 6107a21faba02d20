"""One synthetic record, end to end: patient -> study -> findings -> report + labels -> image.

Every random choice comes from a numpy `SeedSequence` keyed by (seed, preset, institution, what,
which), so record `i` is the same whichever process draws it, in whatever order: the shard
writer's worker count cannot change a byte. Four streams keep the parts independent:

    patients   which records belong to which patient (blocks of BLOCK records)
    anatomy    a patient's body (shared by all of that patient's studies)
    study      causes, findings, labels and report of one study (cheap: no pixels)
    image      acquisition and drawing of one study's image
    noise      its detector noise (apart, so that adding a finding changes nothing else)
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, fields, replace

import numpy as np

from mixvlp_ds.shard.synth.acquisition import canvas_for, develop, sample_exposure
from mixvlp_ds.shard.synth.anatomy import Anatomy, draw_chest, sample_anatomy, study_view
from mixvlp_ds.shard.synth.findings import Finding, adjust_anatomy, draw_findings, sample_finding
from mixvlp_ds.shard.synth.institutions import CAUSES, DRAWN, finding_probs, get_preset
from mixvlp_ds.shard.synth.reports import decide_labels, write_report

BLOCK = 64  # records per patient block: a record's patient is found without reading earlier blocks
_STREAMS = {"patients": 1, "anatomy": 2, "study": 3, "image": 4, "split": 5, "noise": 6}


@dataclass(frozen=True)
class Study:
    """Everything about one record except its pixels."""

    preset: str
    institution: str
    seed: int
    index: int
    patient: int  # patient number, unique within (preset, institution, seed)
    visit: int  # 0, 1, 2: the patient's first, second, third study
    view: str  # "PA" or "AP"
    causes: tuple[str, ...]
    findings: dict[str, Finding]  # the true image content
    labels: dict[str, int | None]  # what the report says (chexpert14)
    text: str | None  # None for image-only presets

    @property
    def patient_id(self) -> str:
        return f"{self.institution}-p{self.patient:07d}"

    @property
    def study_id(self) -> str:
        return f"s{self.index:08d}"


def _crc(text: str) -> int:
    return zlib.crc32(text.encode("utf-8"))


def rng_for(seed: int, preset: str, institution: str, stream: str, number: int) -> np.random.Generator:
    if seed < 0 or number < 0:
        raise ValueError(f"seed and index must be >= 0 (got seed={seed}, index={number})")
    return np.random.default_rng(
        np.random.SeedSequence([seed, _crc(preset), _crc(institution), _STREAMS[stream], number])
    )


def patient_of(preset: str, seed: int, institution: str, index: int) -> tuple[int, int]:
    """(patient number, visit number) of record `index`: each block of BLOCK records is cut into
    patients of 1-3 consecutive studies."""
    p = get_preset(preset)
    block, offset = divmod(index, BLOCK)
    rng = rng_for(seed, preset, institution, "patients", block)
    counts = 1 + rng.choice(3, size=BLOCK, p=p.studies_per_patient)  # more than enough patients
    ends = np.cumsum(counts)
    j = int(np.searchsorted(ends, offset, side="right"))
    start = int(ends[j - 1]) if j else 0
    return block * BLOCK + j, offset - start


def split_of(
    preset: str, seed: int, institution: str, patient: int, shares: tuple[float, float, float] | None = None
) -> str:
    """train / val / test for a patient (all of a patient's studies share it)."""
    train, val, _ = shares or get_preset(preset).splits
    u = rng_for(seed, preset, institution, "split", patient).random()
    return "train" if u < train else ("val" if u < train + val else "test")


def sample_study(preset: str, index: int, seed: int = 0, institution: str | None = None) -> Study:
    """Causes, findings, view, labels and report of record `index` (no pixels: cheap)."""
    p = get_preset(preset)
    institution = institution or p.institution
    patient, visit = patient_of(preset, seed, institution, index)
    rng = rng_for(seed, preset, institution, "study", index)
    active = {c: bool(rng.random() < p.cause_rates[c]) for c in CAUSES}
    probs = finding_probs(active)
    present = [f for f in DRAWN if rng.random() < probs[f]]
    findings = {name: sample_finding(name, rng) for name in present}
    ap = rng.random() < (0.8 if active["critical_care"] else p.ap_rate)
    labels = decide_labels(findings, rng)
    text = None
    if p.paired:
        text, labels = write_report(findings, labels, p.report_style, rng)
    return Study(
        preset=preset,
        institution=institution,
        seed=seed,
        index=index,
        patient=patient,
        visit=visit,
        view="AP" if ap else "PA",
        causes=tuple(c for c in CAUSES if active[c]),
        findings=findings,
        labels=labels,
        text=text,
    )


def render_study(study: Study, conspicuity: float = 1.0) -> np.ndarray:
    """The study's radiograph: uint8 (H, W), H = W = one of the preset's original sizes.

    `conspicuity` scales every finding's signature (its change of the anatomy, of the attenuation
    and of the vessels) by that factor; 1.0 draws the findings as findings.py writes them, and the
    same random streams are used at any value, so only the findings' pixels change."""
    if conspicuity < 0:
        raise ValueError(f"conspicuity must be >= 0, got {conspicuity}")
    p = get_preset(study.preset)
    body = rng_for(study.seed, study.preset, study.institution, "anatomy", study.patient)
    female = bool(body.random() < p.female_rate)
    anat = sample_anatomy(body, female)
    rng = rng_for(study.seed, study.preset, study.institution, "image", study.index)
    exposure = sample_exposure(rng, p.acquisition, study.institution)
    normal = study_view(anat, rng, study.view == "AP")
    anat = _scaled(normal, adjust_anatomy(normal, study.findings), conspicuity)
    canvas = canvas_for(exposure)
    A, lung, vessels = draw_chest(canvas, anat, rng)
    if conspicuity == 1.0:
        draw_findings(canvas, A, lung, vessels, anat, study.findings, rng)
    else:
        A0, v0 = A.copy(), vessels.copy()
        draw_findings(canvas, A, lung, vessels, anat, study.findings, rng)
        A[...] = A0 + np.float32(conspicuity) * (A - A0)
        np.maximum(v0 + np.float32(conspicuity) * (vessels - v0), 0.0, out=vessels)
    A += vessels
    return develop(A, exposure, rng_for(study.seed, study.preset, study.institution, "noise", study.index))


def _scaled(normal: Anatomy, changed: Anatomy, k: float) -> Anatomy:
    """`normal` moved k times as far as the findings moved it (k = 1: `changed` itself)."""
    if k == 1.0:
        return changed
    moved = {f.name: getattr(normal, f.name) + k * (getattr(changed, f.name) - getattr(normal, f.name))
             for f in fields(Anatomy) if f.type in ("float", float)}
    return replace(normal, **moved)


def render_image(preset: str, index: int, seed: int = 0, institution: str | None = None,
                 conspicuity: float = 1.0) -> np.ndarray:
    """Module-level (picklable through functools.partial): the image of record `index`."""
    return render_study(sample_study(preset, index, seed, institution), conspicuity)


def study_meta(study: Study, shares: tuple[float, float, float] | None = None) -> dict:
    return {
        "institution": study.institution,
        "patient_id": study.patient_id,
        "study_id": study.study_id,
        "view": study.view,
        "split": split_of(study.preset, study.seed, study.institution, study.patient, shares),
    }


def make_record(
    preset: str,
    index: int,
    seed: int = 0,
    institution: str | None = None,
    shares: tuple[float, float, float] | None = None,
    conspicuity: float = 1.0,
):
    """(image uint8 (H, W) | None, text | None, labels dict, meta dict) of record `index`.

    Every preset has an image; `text` is None for image-only presets (nih-like)."""
    study = sample_study(preset, index, seed, institution)
    return render_study(study, conspicuity), study.text, dict(study.labels), study_meta(study, shares)
