"""The 13 drawn CheXpert findings: what each looks like on a frontal chest film.

Each present finding is a `Finding` (severity 0..1, side, zone, kind), sampled with the study so
the report can describe it ("moderate left pleural effusion"); the renderer then draws it:

* geometric findings change the anatomy before the chest is drawn (`adjust_anatomy`):
  cardiomegaly widens the heart, an enlarged cardiomediastinum widens the upper mediastinum,
  atelectasis raises its hemidiaphragm (volume loss);
* density findings change the attenuation map afterwards (`draw_findings`), one function each.

Severity scales every signature, and the mildest cases overlap normal anatomical variation on
purpose: a classifier has to learn, not threshold one pixel.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from mixvlp_ds.shard.synth.anatomy import Anatomy, costophrenic_v, lateral_edge, rib_pattern
from mixvlp_ds.shard.synth.canvas import F32, Canvas, ramp, segment_distance, smooth_field

DEVICES = ("endotracheal tube", "nasogastric tube", "central venous catheter", "pacemaker")
ZONE_V = {"upper": -0.45, "mid": -0.05, "lower": 0.32}


@dataclass(frozen=True)
class Finding:
    """One present finding. side: "right" | "left" | "bilateral" | ""; kind: a sub-type."""

    name: str
    severity: float
    side: str = ""
    zone: str = ""
    kind: str = ""


def sample_finding(name: str, rng: np.random.Generator) -> Finding:
    """The visible parameters of a present finding (what a report would describe)."""
    sev = float(rng.beta(2.0, 2.0))
    side = ("right", "left")[int(rng.integers(2))]
    if name == "Pleural Effusion":
        return Finding(name, sev, side="bilateral" if rng.random() < 0.35 else side)
    if name in ("Lung Opacity", "Pneumonia", "Consolidation"):
        zone = ("upper", "mid", "lower", "lower")[int(rng.integers(4))]
        bilateral = name == "Lung Opacity" and rng.random() < 0.3
        return Finding(name, sev, side="bilateral" if bilateral else side, zone=zone)
    if name == "Lung Lesion":
        zone = ("upper", "mid", "lower")[int(rng.integers(3))]
        return Finding(name, sev, side=side, zone=zone, kind="mass" if sev > 0.6 else "nodule")
    if name == "Atelectasis":
        return Finding(name, sev, side="bilateral" if rng.random() < 0.3 else side, zone="lower")
    if name == "Support Devices":
        n = 1 + int(rng.random() < 0.45) + int(rng.random() < 0.2)
        kinds = sorted(rng.choice(len(DEVICES), size=n, replace=False, p=(0.35, 0.25, 0.3, 0.1)))
        return Finding(name, sev, kind="+".join(DEVICES[k] for k in kinds))
    if name in ("Pneumothorax", "Fracture", "Pleural Other"):
        return Finding(name, sev, side=side)
    return Finding(name, sev)  # Cardiomegaly, Edema, Enlarged Cardiomediastinum


def sides(f: Finding) -> tuple[str, ...]:
    return ("right", "left") if f.side == "bilateral" else (f.side,)


def sign(side: str) -> float:
    """The patient's right is on the image's left (negative u)."""
    return -1.0 if side == "right" else 1.0


def adjust_anatomy(anat: Anatomy, findings: dict[str, Finding]) -> Anatomy:
    if f := findings.get("Cardiomegaly"):
        anat = replace(anat, ctr=anat.ctr + 0.02 + 0.1 * f.severity)
    if f := findings.get("Enlarged Cardiomediastinum"):
        anat = replace(anat, med_w=anat.med_w * (1.12 + 0.35 * f.severity), knob=anat.knob + 0.015)
    if f := findings.get("Atelectasis"):
        lift = 0.01 + 0.04 * f.severity
        for s in sides(f):
            anat = replace(anat, **{f"dome_{s[0]}": getattr(anat, f"dome_{s[0]}") - lift})
    return anat


def draw_findings(
    canvas: Canvas,
    A: np.ndarray,
    lung: np.ndarray,
    vessels: np.ndarray,
    anat: Anatomy,
    findings: dict[str, Finding],
    rng: np.random.Generator,
) -> None:
    """Draw every present density finding into A (and vessels), in a fixed order."""
    for name, draw in _DRAW.items():
        if name in findings:
            draw(canvas, A, lung, vessels, anat, findings[name], rng)


def pleural_effusion(canvas, A, lung, vessels, anat, f, rng) -> None:
    """Fluid layering at the base: the costophrenic angle blunts and a meniscus climbs laterally."""
    for s in sides(f):
        cs = canvas.cols(0.0, 9.0) if s == "left" else canvas.cols(-9.0, 0.0)
        au = np.abs(canvas.u[:, cs])
        level = costophrenic_v(anat, s) - (0.0 + 0.35 * f.severity)  # fluid height at the chest wall
        surface = level + 0.9 * (anat.lung_w - au) ** 2 + 0.05  # (1, W): meniscus
        fluid = ramp(canvas.v - surface, 0.05) * ramp(anat.lung_w + 0.04 - au, 0.03)
        A[:, cs] += fluid * (F32(anat.air * 0.9) * lung[:, cs] + F32(0.06))
        vessels[:, cs] *= 1.0 - fluid


def pneumothorax(canvas, A, lung, vessels, anat, f, rng) -> None:
    """A lucent rim without lung markings at the apex and lateral wall, bounded by a pleural line."""
    s = f.side
    cs = canvas.cols(0.0, 9.0) if s == "left" else canvas.cols(-9.0, 0.0)
    rs = canvas.rows(anat.apex_v - 0.1, costophrenic_v(anat, s))
    au, v = np.abs(canvas.u[:, cs]), canvas.v[rs]
    depth = (0.04 + 0.18 * f.severity) * (1.0 - 0.6 * np.clip((v - anat.apex_v) / 1.3, 0, 1))  # (H, 1)
    inside = lateral_edge(anat, s, v) - au  # distance in from the chest wall
    apex = v - (anat.apex_v + 1.1 * (au - 0.40) ** 2)  # distance down from the apex
    d = np.minimum(inside, apex + 0.3 * depth)
    rim = ramp(depth - d, 0.02) * lung[rs, cs]
    vessels[rs, cs] *= 1.0 - rim
    A[rs, cs] -= F32(0.12) * rim
    line = ramp(0.008 - np.abs(d - depth), 0.008) * lung[rs, cs]
    A[rs, cs] += F32(0.12) * line


def lung_lesion(canvas, A, lung, vessels, anat, f, rng) -> None:
    """A round opacity: a nodule (small) or a mass (larger, lobulated)."""
    r = 0.03 + 0.08 * f.severity
    uc = sign(f.side) * (0.3 + 0.35 * rng.random())
    vc = ZONE_V[f.zone] + 0.12 * (rng.random() - 0.5)
    rs, cs, bu, bv = canvas.box(uc - 1.4 * r, uc + 1.4 * r, vc - 1.4 * r, vc + 1.4 * r)
    lobes = 1.0 + 0.12 * smooth_field(rng, (rs.stop - rs.start, cs.stop - cs.start), 4)
    q = 1.0 - (((bu - uc) ** 2 + (bv - vc) ** 2) / (r * r)) * lobes
    A[rs, cs] += F32(0.15 + 0.15 * f.severity) * np.sqrt(np.clip(q, 0.0, 1.0))


def _airspace(canvas, A, lung, anat, f, rng, density: float, coverage: float, width: float) -> None:
    """Patchy airspace disease in one lung zone: a thresholded smooth field inside an ellipse."""
    for s in sides(f):
        uc, vc = sign(s) * 0.5, ZONE_V[f.zone]
        ru, rv = 0.32 + 0.1 * f.severity, 0.2 + 0.12 * f.severity
        rs, cs, bu, bv = canvas.box(uc - ru, uc + ru, vc - rv, vc + rv)
        patch = smooth_field(rng, (rs.stop - rs.start, cs.stop - cs.start), 7)
        patch += F32(coverage * (0.5 + f.severity))
        patch = ramp(patch, width)
        patch *= ramp(1.0 - ((bu - uc) / ru) ** 2 - ((bv - vc) / rv) ** 2, 0.5)
        A[rs, cs] += F32(density * anat.air) * patch * lung[rs, cs]


def consolidation(canvas, A, lung, vessels, anat, f, rng) -> None:
    _airspace(canvas, A, lung, anat, f, rng, density=0.2 + 0.3 * f.severity, coverage=0.6, width=0.8)


def pneumonia(canvas, A, lung, vessels, anat, f, rng) -> None:
    _airspace(canvas, A, lung, anat, f, rng, density=0.15 + 0.3 * f.severity, coverage=0.4, width=1.5)


def lung_opacity(canvas, A, lung, vessels, anat, f, rng) -> None:
    _airspace(canvas, A, lung, anat, f, rng, density=0.1 + 0.25 * f.severity, coverage=0.3, width=2.5)


def edema(canvas, A, lung, vessels, anat, f, rng) -> None:
    """Bilateral perihilar ("bat-wing") haze and engorged, upper-zone vessels."""
    au = np.abs(canvas.u)
    col = np.exp(-(((au - 0.22) / 0.32) ** 2)).astype(F32)
    row = np.exp(-(((canvas.v + 0.0) / 0.45) ** 2)).astype(F32)
    A += F32(anat.air * (0.04 + 0.16 * f.severity)) * (col * row) * lung
    vessels *= F32(1.1 + 0.5 * f.severity)


def atelectasis(canvas, A, lung, vessels, anat, f, rng) -> None:
    """Plate-like (discoid) bands at the base; the dome on that side is raised (adjust_anatomy)."""
    for s in sides(f):
        sg = sign(s)
        v0 = (anat.dome_r if s == "right" else anat.dome_l) - 0.12 - 0.15 * rng.random()
        p0, p1 = (
            (sg * (0.22 + 0.1 * rng.random()), v0),
            (sg * (0.6 + 0.15 * rng.random()), v0 + 0.08 * rng.normal()),
        )
        th = 0.012 + 0.025 * f.severity
        rs, cs, bu, bv = canvas.box(
            min(p0[0], p1[0]) - 0.05,
            max(p0[0], p1[0]) + 0.05,
            min(p0[1], p1[1]) - 0.06,
            max(p0[1], p1[1]) + 0.06,
        )
        band = ramp(th - segment_distance(bu, bv, p0, p1), 0.03)
        A[rs, cs] += F32(anat.air * 0.3) * band * lung[rs, cs]


def fracture(canvas, A, lung, vessels, anat, f, rng) -> None:
    """A lateral rib discontinuity: a gap, a step-off of the outer fragment, and callus."""
    sg = sign(f.side)
    uc = sg * (0.55 + 0.2 * rng.random())
    vc = anat.apex_v + 0.35 + 0.6 * rng.random()
    rs, cs, bu, bv = canvas.box(uc - 0.12, uc + 0.12, vc - 0.12, vc + 0.12)
    au = np.abs(bu)
    ribs = rib_pattern(au, bv, anat, posterior=True)
    step = replace(anat, rib_phase=anat.rib_phase + 0.12 + 0.15 * f.severity)
    outer = ramp(au - abs(uc), 0.01)  # lateral fragment, displaced
    gap = ramp(0.008 + 0.01 * f.severity - np.abs(au - abs(uc)), 0.006)
    new = ribs * (1.0 - outer) + rib_pattern(au, bv, step, posterior=True) * outer
    new *= 1.0 - gap
    A[rs, cs] += F32(0.10) * (new - ribs)
    callus = np.exp(-(((bu - uc) / 0.03) ** 2) - ((bv - vc) / 0.05) ** 2).astype(F32)
    A[rs, cs] += F32(0.12 * f.severity) * callus


def pleural_other(canvas, A, lung, vessels, anat, f, rng) -> None:
    """Pleural thickening: a smooth band along the lateral chest wall, thickest at the apex."""
    s = f.side
    cs = canvas.cols(0.0, 9.0) if s == "left" else canvas.cols(-9.0, 0.0)
    rs = canvas.rows(anat.apex_v - 0.1, costophrenic_v(anat, s))
    au, v = np.abs(canvas.u[:, cs]), canvas.v[rs]
    th = (0.025 + 0.05 * f.severity) * (1.0 + 0.8 * np.clip((-0.2 - v) / 0.6, 0.0, 1.0))  # (H, 1)
    d = lateral_edge(anat, s, v) - au
    band = ramp(th - d, 0.015) * lung[rs, cs]
    A[rs, cs] += F32(anat.air * 0.5) * band


def support_devices(canvas, A, lung, vessels, anat, f, rng) -> None:
    """Radio-opaque lines and tubes, each a thin dense polyline; a pacemaker adds its generator."""
    j = lambda s=0.02: float(s * rng.normal())  # noqa: E731
    for kind in f.kind.split("+"):
        if kind == "endotracheal tube":
            tip = -0.38 + j(0.05)
            _polyline(canvas, A, [(0.01, -1.6), (0.01 + j(0.01), tip)], 0.01, 0.15)
        elif kind == "nasogastric tube":
            pts = [(-0.02, -1.6), (0.0 + j(), -0.3), (0.03 + j(), 0.4), (0.25 + j(0.04), anat.dome_l + 0.25)]
            _polyline(canvas, A, pts, 0.007, 0.15)
        elif kind == "central venous catheter":
            side = -1.0 if rng.random() < 0.7 else 1.0
            pts = [
                (side * 0.62, -0.95),
                (side * 0.25, -0.78 + j()),
                (-0.08, -0.55),
                (-0.07 + j(0.01), -0.2 + j()),
            ]
            _polyline(canvas, A, pts, 0.006, 0.15)
        elif kind == "pacemaker":
            gu, gv = 0.55 + j(0.04), -0.7 + j(0.04)
            rs, cs, bu, bv = canvas.box(gu - 0.12, gu + 0.12, gv - 0.09, gv + 0.09)
            box = ramp(0.1 - np.abs(bu - gu), 0.02) * ramp(0.065 - np.abs(bv - gv), 0.02)
            A[rs, cs] += F32(0.5) * box
            for end in ((-0.05, 0.28), (0.05, 0.22)):
                _polyline(canvas, A, [(gu, gv), (0.05, -0.45), end], 0.006, 0.4)


def _polyline(canvas: Canvas, A: np.ndarray, pts, width: float, density: float) -> None:
    for p0, p1 in zip(pts[:-1], pts[1:], strict=True):
        pad = width + 0.02
        rs, cs, bu, bv = canvas.box(
            min(p0[0], p1[0]) - pad, max(p0[0], p1[0]) + pad, min(p0[1], p1[1]) - pad, max(p0[1], p1[1]) + pad
        )
        if rs.stop > rs.start and cs.stop > cs.start:
            A[rs, cs] += F32(density) * ramp(width - segment_distance(bu, bv, p0, p1), 0.01)


# Order matters only where signatures overlap: fluid and airspace first, devices on top.
_DRAW = {
    "Pleural Effusion": pleural_effusion,
    "Consolidation": consolidation,
    "Pneumonia": pneumonia,
    "Lung Opacity": lung_opacity,
    "Edema": edema,
    "Atelectasis": atelectasis,
    "Lung Lesion": lung_lesion,
    "Pneumothorax": pneumothorax,
    "Pleural Other": pleural_other,
    "Fracture": fracture,
    "Support Devices": support_devices,
}
