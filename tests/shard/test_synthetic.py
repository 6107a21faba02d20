"""The synthetic institutions: determinism, label/report agreement, image signatures, preset roles,
co-occurrence frequencies, and the Source/CLI contract."""

from __future__ import annotations

import argparse
import hashlib
import math
import multiprocessing as mp
import os
import pickle
import re
import subprocess
import sys
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from mixvlp_ds.labels import CHEXPERT14
from mixvlp_ds.shard.format import label_values
from mixvlp_ds.shard.source import RejectLog
from mixvlp_ds.shard.sources import synthetic
from mixvlp_ds.shard.sources.synthetic import SyntheticSource, make_record
from mixvlp_ds.shard.synth.acquisition import canvas_for, sample_exposure
from mixvlp_ds.shard.synth.findings import Finding
from mixvlp_ds.shard.synth.institutions import DRAWN, PRESETS, expected_rates
from mixvlp_ds.shard.synth.record import render_study, rng_for, sample_study

REPO = Path(__file__).resolve().parents[2]


def _digest(preset: str, index: int, seed: int = 0, institution: str | None = None) -> str:
    img, text, labels, meta = make_record(preset, index, seed, institution)
    h = hashlib.sha256(img.tobytes() + str(img.shape).encode())
    h.update(repr((text, sorted(labels.items(), key=lambda kv: kv[0]), sorted(meta.items()))).encode())
    return h.hexdigest()


def _digest_args(args):
    return _digest(*args)


# --- determinism -------------------------------------------------------------------------------


def test_same_arguments_give_identical_records_in_any_order_and_process():
    jobs = [("mimic-like", i, 3) for i in range(6)]
    here = [_digest_args(j) for j in jobs]
    backwards = [_digest_args(j) for j in reversed(jobs)][::-1]
    with mp.get_context("spawn").Pool(2) as pool:
        in_workers = pool.map(_digest_args, jobs, chunksize=1)
    assert here == backwards == in_workers
    assert len(set(here)) == len(here)


def test_blas_thread_count_does_not_change_pixels():
    code = (
        "import hashlib; from mixvlp_ds.shard.sources.synthetic import make_record; "
        "print(' '.join(hashlib.sha256(make_record('nih-like', i, 1)[0].tobytes()).hexdigest() "
        "for i in range(3)))"
    )
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split()
    assert out == [hashlib.sha256(make_record("nih-like", i, 1)[0].tobytes()).hexdigest() for i in range(3)]


def test_seed_and_institution_change_the_records():
    base = _digest("mimic-like", 5, 0)
    assert _digest("mimic-like", 5, 1) != base
    assert _digest("mimic-like", 5, 0, "hospital-b") != base


# --- reports agree with labels -----------------------------------------------------------------

# Written independently of reports.py: which words reveal that a sentence talks about a finding.
MENTIONS = {
    "Atelectasis": r"atelecta",
    "Cardiomegaly": r"cardiomegaly|\bheart\b|cardiac silhouette",
    "Consolidation": r"consolidat",
    "Edema": r"edema",
    "Enlarged Cardiomediastinum": r"mediastin",
    "Fracture": r"fracture",
    "Lung Lesion": r"nodule|\bmass\b",
    "Lung Opacity": r"opacit",
    "Pleural Effusion": r"effusion",
    "Pleural Other": r"pleural thickening|apical cap",
    "Pneumonia": r"pneumonia",
    "Pneumothorax": r"pneumothorax",
    "Support Devices": r"tube|catheter|pacemaker",
}
HEDGE = re.compile(r"possible|cannot be excluded|may represent|questionable|suspicious for")
NEGATION = re.compile(r"^(no|there is no)\b|\bnormal\b|not enlarged")


@pytest.mark.parametrize("preset", ["mimic-like", "openi-like"])
def test_every_label_is_stated_in_the_report_with_the_right_polarity(preset):
    seen = Counter()
    for i in range(150):
        s = sample_study(preset, i, seed=1)
        sentences = [x.strip().lower() for x in s.text.split(".") if x.strip()]
        assert s.text == " ".join(s.text.split()), "text is whitespace-normalised"
        for name, pattern in MENTIONS.items():
            about = [x for x in sentences if re.search(pattern, x)]
            value = s.labels[name]
            seen[(name, value)] += 1
            if value is None:
                assert not about, (name, s.text)
                continue
            assert about, (name, value, s.text)
            if value == 1:
                assert all(not HEDGE.search(x) and not NEGATION.search(x) for x in about), (name, s.text)
            elif value == -1:
                assert any(HEDGE.search(x) for x in about), (name, s.text)
            else:
                assert all(NEGATION.search(x) for x in about), (name, s.text)
        pathology = [s.labels[n] for n in CHEXPERT14 if n not in ("No Finding", "Support Devices")]
        assert s.labels["No Finding"] == (None if any(v in (1, -1) for v in pathology) else 1)
    # The sample exercises all three kinds of mention for the common findings.
    for name in ("Pleural Effusion", "Cardiomegaly", "Atelectasis"):
        assert seen[(name, 1)] and seen[(name, 0)], name
    assert sum(seen[(n, -1)] for n in MENTIONS) >= 5


def test_present_findings_drive_positive_labels():
    """Labels follow the true image content: most present findings are labelled 1 or -1."""
    stated = present = 0
    for i in range(300):
        s = sample_study("mimic-like", i, seed=2)
        for name in s.findings:
            present += 1
            stated += s.labels[name] in (1, -1)
        for name in DRAWN:
            if name not in s.findings:
                assert s.labels[name] in (0, None, -1)
    assert present > 200 and stated / present > 0.9


def test_reports_vary_in_phrasing():
    texts = {sample_study("mimic-like", i, seed=0).text for i in range(200)}
    effusion = {
        re.sub(r"\b(left|right|bilateral|small|moderate|large)\b", "X", x)
        for t in texts
        for x in t.split(". ")
        if "effusion" in x and not x.startswith("No")
    }
    assert len(texts) > 190 and len(effusion) >= 3


# --- image signatures --------------------------------------------------------------------------


def _pair(name: str, finding: Finding, preset: str = "openi-like", index: int = 7, seed: int = 0):
    """The same study rendered without any finding and with only `finding`; + its canvas."""
    base = replace(sample_study(preset, index, seed), findings={}, view="PA")
    with_f = replace(base, findings={name: finding})
    rng = rng_for(seed, preset, base.institution, "image", index)
    canvas = canvas_for(sample_exposure(rng, PRESETS[preset].acquisition, base.institution))
    a = render_study(base).astype(float)
    b = render_study(with_f).astype(float)
    return a, b, canvas


def _region(canvas, u0, u1, v0, v1):
    return canvas.rows(v0, v1), canvas.cols(u0, u1)


def _mean_change(a, b, canvas, u0, u1, v0, v1):
    rs, cs = _region(canvas, u0, u1, v0, v1)
    return float((b[rs, cs] - a[rs, cs]).mean())


def test_cardiomegaly_widens_the_heart_shadow():
    a, b, c = _pair("Cardiomegaly", Finding("Cardiomegaly", 0.9))
    assert _mean_change(a, b, c, 0.3, 0.7, 0.25, 0.5) > 4.0  # left heart border moves out
    assert abs(_mean_change(a, b, c, -0.8, -0.5, -0.6, -0.2)) < 0.5  # right upper lung untouched


def test_enlarged_cardiomediastinum_widens_the_upper_mediastinum():
    a, b, c = _pair("Enlarged Cardiomediastinum", Finding("Enlarged Cardiomediastinum", 0.9))
    assert _mean_change(a, b, c, -0.2, -0.1, -0.7, -0.3) > 3.0
    assert abs(_mean_change(a, b, c, -0.8, -0.5, 0.0, 0.3)) < 0.5


@pytest.mark.parametrize("side,sign", [("right", -1.0), ("left", 1.0)])
def test_effusion_fills_the_costophrenic_angle_on_its_side(side, sign):
    a, b, c = _pair("Pleural Effusion", Finding("Pleural Effusion", 0.8, side=side))
    lo, hi = sorted((sign * 0.55, sign * 0.9))
    olo, ohi = sorted((-sign * 0.55, -sign * 0.9))
    assert _mean_change(a, b, c, lo, hi, 0.35, 0.7) > 8.0
    assert abs(_mean_change(a, b, c, olo, ohi, 0.35, 0.7)) < 0.5


def test_pneumothorax_darkens_the_apex_and_erases_markings():
    a, b, c = _pair("Pneumothorax", Finding("Pneumothorax", 0.9, side="left"))
    assert _mean_change(a, b, c, 0.55, 0.85, -0.6, -0.2) < -2.0
    assert abs(_mean_change(a, b, c, -0.85, -0.55, -0.6, -0.2)) < 0.5


def _centroid(a, b, c):
    d = np.clip(b - a, 0.0, None)
    w = d.sum()
    u = float((d.sum(axis=0) * c.u[0]).sum() / w)
    v = float((d.sum(axis=1) * c.v[:, 0]).sum() / w)
    return u, v, w


@pytest.mark.parametrize(
    "name,zone,vz",
    [
        ("Lung Lesion", "upper", -0.45),
        ("Consolidation", "lower", 0.32),
        ("Pneumonia", "mid", -0.05),
        ("Lung Opacity", "upper", -0.45),
    ],
)
def test_focal_opacities_appear_in_their_lung_and_zone(name, zone, vz):
    for side, sign in (("right", -1.0), ("left", 1.0)):
        a, b, c = _pair(name, Finding(name, 0.8, side=side, zone=zone, kind="mass"))
        u, v, mass = _centroid(a, b, c)
        assert mass > 0 and u * sign > 0.2, (name, side, u)
        assert abs(v - vz) < 0.2, (name, zone, v)


def test_edema_hazes_both_perihilar_regions():
    a, b, c = _pair("Edema", Finding("Edema", 0.9))
    assert _mean_change(a, b, c, -0.5, -0.15, -0.25, 0.2) > 2.0
    assert _mean_change(a, b, c, 0.15, 0.5, -0.4, 0.0) > 2.0


def test_atelectasis_adds_a_basal_band_on_its_side():
    a, b, c = _pair("Atelectasis", Finding("Atelectasis", 0.8, side="right", zone="lower"))
    u, v, _ = _centroid(a, b, c)
    assert u < -0.1 and v > 0.0


def test_fracture_and_pleural_thickening_are_lateral_on_their_side():
    a, b, c = _pair("Fracture", Finding("Fracture", 0.9, side="left"))
    d = np.abs(b - a)
    assert d.sum() > 0
    rs, cs = _region(c, 0.4, 1.0, -1.0, 0.8)
    assert d[rs, cs].sum() > 0.95 * d.sum()
    a, b, c = _pair("Pleural Other", Finding("Pleural Other", 0.9, side="right"))
    assert _mean_change(a, b, c, -0.9, -0.6, -0.7, 0.2) > 2.0
    assert abs(_mean_change(a, b, c, 0.6, 0.9, -0.7, 0.2)) < 0.5


def test_support_devices_draw_dense_lines():
    a, b, c = _pair("Support Devices", Finding("Support Devices", 0.5, kind="endotracheal tube+pacemaker"))
    rs, cs = _region(c, -0.03, 0.05, -1.0, -0.45)
    assert np.median((b - a)[rs, cs].max(axis=1)) > 8.0  # a tube down the trachea, every row
    assert _mean_change(a, b, c, 0.48, 0.62, -0.75, -0.65) > 20.0  # pacemaker generator


def test_conspicuity_scales_only_the_findings():
    """conspicuity k draws every signature k times as strong; 1 is the default image byte for byte,
    0 the finding-free twin (same patient, exposure and noise)."""
    study = sample_study("mimic-like", 5, 0)
    study = replace(study, view="PA", findings={
        "Cardiomegaly": Finding("Cardiomegaly", 0.5),
        "Pleural Effusion": Finding("Pleural Effusion", 0.5, side="left"),
        "Edema": Finding("Edema", 0.5)})
    plain = render_study(study)
    assert np.array_equal(render_study(study, 1.0), plain)
    assert np.array_equal(render_study(study, 0.0), render_study(replace(study, findings={})))
    free = render_study(study, 0.0).astype(float)
    change = [np.abs(render_study(study, k).astype(float) - free).mean() for k in (1.0, 2.0, 3.0)]
    assert change[0] > 1.0 and change[1] > 1.6 * change[0] and change[2] > 1.3 * change[1]
    with pytest.raises(ValueError, match="conspicuity"):
        render_study(study, -1.0)


def test_conspicuity_reaches_the_shard_writers_workers():
    item = next(SyntheticSource("mimic-like", num=1, conspicuity=2.0).items(RejectLog()))
    again = pickle.loads(pickle.dumps(item.image_fn))
    study = sample_study("mimic-like", 0, 0)
    assert np.array_equal(again(), render_study(study, 2.0))
    with pytest.raises(ValueError, match="conspicuity"):
        SyntheticSource("mimic-like", conspicuity=-0.5)


# --- presets and patients ----------------------------------------------------------------------


def test_presets_play_their_roles():
    nih = [make_record("nih-like", i, 0) for i in range(3)]
    assert all(text is None and img.dtype == np.uint8 and img.shape == (512, 512) for img, text, _, _ in nih)
    studies = [sample_study("openi-like", i, 0) for i in range(300)]
    assert all(s.text for s in studies)
    splits = Counter(synthetic.study_meta(s)["split"] for s in studies)
    assert splits["test"] > 0.55 * len(studies)
    img, text, labels, meta = make_record("mimic-like", 0, 0)
    assert text and img.shape[0] in PRESETS["mimic-like"].acquisition.sizes
    assert set(meta) == {"institution", "patient_id", "study_id", "view", "split"}


def test_patients_have_one_to_three_studies_sharing_a_split():
    metas = [synthetic.study_meta(sample_study("mimic-like", i, 4), (0.5, 0.25, 0.25)) for i in range(400)]
    per_patient = Counter(m["patient_id"] for m in metas)
    assert set(per_patient.values()) <= {1, 2, 3} and max(per_patient.values()) == 3
    split_of = {}
    for m in metas:
        assert split_of.setdefault(m["patient_id"], m["split"]) == m["split"]
    shares = Counter(split_of.values())
    assert 0.35 < shares["train"] / len(split_of) < 0.65 and shares["val"] and shares["test"]


# --- co-occurrence -----------------------------------------------------------------------------


def test_finding_rates_and_co_occurrence_match_the_documented_model():
    preset, n = "mimic-like", 600
    studies = [sample_study(preset, i, seed=5) for i in range(n)]
    marg, pair = expected_rates(PRESETS[preset])
    for name in DRAWN:
        p = marg[name]
        got = sum(name in s.findings for s in studies) / n
        assert abs(got - p) < 4 * math.sqrt(p * (1 - p) / n) + 1e-9, (name, got, p)
    both = sum({"Edema", "Cardiomegaly"} <= set(s.findings) for s in studies) / n
    p = pair[("Cardiomegaly", "Edema")]
    assert abs(both - p) < 4 * math.sqrt(p * (1 - p) / n)
    assert p > 2 * marg["Cardiomegaly"] * marg["Edema"]  # heart failure ties them together


# --- the Source and the command line -----------------------------------------------------------


def test_source_items_follow_the_source_contract(tmp_path):
    src = SyntheticSource(preset="mimic-like", num=12, seed=0)
    assert src.label_space == "chexpert14" and src.name
    items = list(src.items(RejectLog(tmp_path / "rejects.jsonl")))
    assert len(items) == 12 and len({it.key for it in items}) == 12
    for it in items:
        assert "." not in it.key and it.text and it.has_image
        assert label_values("chexpert14", it.labels) == it.labels
        assert {"institution", "patient_id", "study_id", "view", "split"} <= set(it.meta)
    fn = pickle.loads(pickle.dumps(items[3].image_fn))
    img = fn()
    assert img.dtype == np.uint8 and img.ndim == 2
    ref_img, ref_text, ref_labels, _ = make_record("mimic-like", 3, 0)
    assert np.array_equal(img, ref_img) and items[3].text == ref_text and items[3].labels == ref_labels
    nih = list(SyntheticSource(preset="nih-like", num=3).items(RejectLog()))
    assert all(it.text is None and it.has_image for it in nih)


def test_command_line_options_build_the_source():
    parser = argparse.ArgumentParser()
    parser.add_argument("--institution")
    parser.add_argument("--seed", type=int, default=0)
    synthetic.add_arguments(parser)
    args = parser.parse_args(
        [
            "--preset",
            "openi-like",
            "--num",
            "5",
            "--seed",
            "2",
            "--institution",
            "h2",
            "--split-shares",
            "0.5,0.5,0",
            "--conspicuity",
            "2.5",
        ]
    )
    src = synthetic.build(args)
    assert src.conspicuity == 2.5
    items = list(src.items(RejectLog()))
    assert len(items) == 5 and all(
        it.meta["institution"] == "h2" and it.meta["split"] != "test" for it in items
    )
    with pytest.raises(SystemExit):
        parser.parse_args(["--split-shares", "0.5,0.6,0.1"])
    with pytest.raises(ValueError, match="preset"):
        SyntheticSource(preset="nope")
