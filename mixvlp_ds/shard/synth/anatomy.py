"""The normal chest: soft tissue, lungs, heart, mediastinum, trachea, spine, ribs, clavicles, vessels.

The picture is an *attenuation map* A (float32, H x W): about 0 outside the body, ~1 for soft
tissue (heart, abdomen below the diaphragm), ~0.35 over aerated lung, bone adds ~0.1-0.25. The
acquisition step (acquisition.py) turns it into 8-bit pixels. Body units are explained in
canvas.py. Shapes follow a frontal (PA) chest film: the heart sits left of the patient's midline
(image right), the right hemidiaphragm is higher than the left, posterior ribs run down laterally.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from mixvlp_ds.shard.synth.canvas import F32, Canvas, ramp, segment_distance, smooth_field


@dataclass(frozen=True)
class Anatomy:
    """One patient's chest as seen in one study (findings may change some fields: findings.py)."""

    lung_w: float = 0.86  # lateral half-width of the lungs at the bases
    apex_v: float = -0.80  # top of the lung apices
    dome_r: float = 0.45  # top of the right hemidiaphragm (image left)
    dome_l: float = 0.50  # top of the left hemidiaphragm
    dome_k: float = 1.3  # dome curvature: how deep the costophrenic angles are
    med_w: float = 0.11  # half-width of the upper mediastinum
    knob: float = 0.05  # aortic knob bulge into the left lung
    heart_u: float = 0.07  # heart centre
    heart_v: float = 0.30
    ctr: float = 0.45  # cardiothoracic ratio (normal < 0.5)
    heart_h: float = 0.27  # heart half-height
    heart_tilt: float = 0.35  # radians: the apex points down and to the patient's left
    body_w: float = 1.12  # soft-tissue half-width (habitus)
    tissue: float = 1.0  # soft-tissue density
    air: float = 0.62  # how much aerated lung lowers attenuation
    rib_gap: float = 0.155  # vertical spacing of posterior ribs
    rib_phase: float = 0.0
    clavicle_v: float = -0.80
    female: bool = False

    @property
    def heart_w(self) -> float:
        return self.ctr * self.lung_w


def sample_anatomy(rng: np.random.Generator, female: bool) -> Anatomy:
    """A patient's normal chest: the variation a finding's signature has to stand out from."""
    n = rng.normal
    return Anatomy(
        lung_w=0.86 + 0.045 * n(),
        apex_v=-0.80 + 0.035 * n(),
        dome_r=0.45 + 0.05 * n(),
        dome_l=0.50 + 0.05 * n(),
        dome_k=1.3 + 0.15 * n(),
        med_w=0.11 + 0.018 * n(),
        knob=0.05 + 0.012 * n(),
        heart_u=0.07 + 0.03 * n(),
        heart_v=0.37 + 0.035 * n(),
        ctr=0.44 + 0.035 * n(),
        heart_h=0.28 + 0.02 * n(),
        heart_tilt=0.35 + 0.06 * n(),
        body_w=1.05 + 0.18 * rng.random(),
        tissue=0.95 + 0.1 * rng.random(),
        air=0.7 + 0.07 * n(),
        rib_gap=0.155 + 0.008 * n(),
        rib_phase=float(rng.random()),
        clavicle_v=-0.80 + 0.03 * n(),
        female=female,
    )


def study_view(anat: Anatomy, rng: np.random.Generator, ap: bool) -> Anatomy:
    """The same patient on a given day: depth of inspiration, and AP magnification of the heart."""
    insp = 0.06 * rng.normal()
    out = replace(anat, dome_r=anat.dome_r + insp, dome_l=anat.dome_l + insp)
    if ap:  # portable AP films magnify the heart and mediastinum and raise the clavicles
        out = replace(out, ctr=out.ctr * 1.07, med_w=out.med_w * 1.1, clavicle_v=out.clavicle_v - 0.06)
    return out


def lung_bounds(anat: Anatomy, side: str, u_abs: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Signed inside-distance of the lung on one side (positive inside), broadcast (H, W)."""
    dome = anat.dome_r if side == "right" else anat.dome_l
    lateral = lateral_edge(anat, side, v)  # (H, 1)
    medial = np.full_like(v, anat.med_w)
    if side == "left":  # the aortic knob bulges into the left upper lung
        medial = medial + anat.knob * np.exp(-(((v + 0.35) / 0.07) ** 2))
    dome_v = dome + anat.dome_k * (u_abs - 0.42) ** 2  # (1, W)
    apex = anat.apex_v + 1.1 * (u_abs - 0.40) ** 2
    d = lateral - u_abs
    np.minimum(d, u_abs - medial, out=d)
    np.minimum(d, dome_v - v, out=d)
    np.minimum(d, v - apex, out=d)
    return d


def costophrenic_v(anat: Anatomy, side: str) -> float:
    """Height of the costophrenic angle: where the dome meets the lateral chest wall."""
    dome = anat.dome_r if side == "right" else anat.dome_l
    return dome + anat.dome_k * (anat.lung_w - 0.42) ** 2


def lateral_edge(anat: Anatomy, side: str, v: np.ndarray) -> np.ndarray:
    """|u| of the lateral lung edge at each height v (the lungs narrow towards the apex)."""
    cp_v = costophrenic_v(anat, side)
    frac = np.clip((v - anat.apex_v) / (cp_v - anat.apex_v), 0.0, 1.0)
    return (anat.lung_w * (0.5 + 0.5 * np.sqrt(frac))).astype(F32)


def heart_mask(anat: Anatomy, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Soft 0..1 mask of the cardiac silhouette (a tilted ellipse) over the broadcast (v, u) grid."""
    c, s = math.cos(anat.heart_tilt), math.sin(anat.heart_tilt)
    du, dv = u - anat.heart_u, v - anat.heart_v
    x = (du * c + dv * s) * (1.0 / anat.heart_w)
    y = (dv * c - du * s) * (1.0 / anat.heart_h)
    q = 1.0 - x * x - y * y
    return ramp(q, 0.12)


def draw_chest(canvas: Canvas, anat: Anatomy, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """The normal chest. Returns (A, lung, vessels), each (H, W) float32: the attenuation map without
    lung markings, the aerated-lung weight (0..1) that density findings use to stay inside the
    lungs, and the lung markings, which findings may erase (pneumothorax) or engorge (edema)
    before the renderer adds them to A.

    Long on purpose: a drawing recipe, one structure after another in painting order.
    """
    u, v = canvas.u, canvas.v
    h, w = canvas.shape
    au = np.abs(u)

    # Soft tissue: a cylinder-like thickness profile, narrowing to the neck above the shoulders.
    # Below the shoulders the profile is the same on every row: one broadcast copy.
    A = np.empty((h, w), F32)
    top = canvas.rows(-9.0, -0.65).stop
    for rows in (slice(0, top), slice(top, h)):
        vr = v[rows] if rows.start == 0 else np.zeros((1, 1), F32)
        half_w = anat.body_w * (0.34 + 0.66 * np.sqrt(np.clip((vr + 1.1) / 0.45, 0.0, 1.0)))
        t = u * (1.0 / half_w)
        t = np.sqrt(np.clip(1.0 - t * t, 0.0, 1.0)) * F32(anat.tissue)
        A[rows] = t

    # Lungs, one side at a time (each half of the image has its own diaphragm and mediastinum edge),
    # computed inside the box that can hold lung only.
    lung = np.zeros((h, w), F32)
    lowest = max(costophrenic_v(anat, "right"), costophrenic_v(anat, "left"))
    box_rows = canvas.rows(anat.apex_v - 0.05, lowest + 0.05)
    reach = anat.lung_w + 0.05
    halves = (("right", canvas.cols(-reach, 0.0)), ("left", canvas.cols(0.0, reach)))
    for side, cs in halves:
        d = lung_bounds(anat, side, au[:, cs], v[box_rows])
        inner = np.clip(d * F32(1.0 / 0.18), 0.0, 1.0)  # thicker lung centrally: darker
        inner *= F32(0.3)
        inner += F32(0.7)
        inner *= ramp(d, 0.025)
        lung[box_rows, cs] = inner

    # The heart hides the lung behind it (mostly).
    rs, cs, bu, bv = canvas.box(
        anat.heart_u - 0.7, anat.heart_u + 0.7, anat.heart_v - 0.55, anat.heart_v + 0.5
    )
    lung[rs, cs] *= 1.0 - 0.85 * heart_mask(anat, bu, bv)

    # Lung markings: vessels branching from the hila, fading towards the periphery.
    box_cols = canvas.cols(-anat.lung_w - 0.05, anat.lung_w + 0.05)
    bh, bw = box_rows.stop - box_rows.start, box_cols.stop - box_cols.start
    field = smooth_field(rng, (bh, bw), 18)
    np.abs(field, out=field)
    field *= F32(-3.0)
    field += F32(1.0)
    np.clip(field, 0.0, 1.0, out=field)
    field *= field
    bu, bv = au[:, box_cols], v[box_rows]
    field *= (np.exp(-np.abs(bu - 0.2) / 0.35) * F32(0.18)).astype(F32)
    field *= np.exp(-np.abs(bv + 0.02) / 0.55).astype(F32)
    field *= lung[box_rows, box_cols]
    vessels = np.zeros((h, w), F32)
    vessels[box_rows, box_cols] = field
    A -= F32(anat.air) * lung
    for sign in (-1.0, 1.0):  # hilar shadows: pulmonary arteries and bronchi
        _blob(canvas, A, sign * 0.21, -0.04, 0.09, 0.16, 0.11)

    _trachea(canvas, A)
    _spine(canvas, A, anat)
    draw_ribs(canvas, A, anat)
    _clavicles(canvas, A, anat)
    if anat.female:
        _breasts(canvas, A, anat)
    return A, lung, vessels


def _blob(canvas: Canvas, A: np.ndarray, uc: float, vc: float, ru: float, rv: float, amp: float) -> None:
    rs, cs, bu, bv = canvas.box(uc - 2 * ru, uc + 2 * ru, vc - 2 * rv, vc + 2 * rv)
    A[rs, cs] += amp * np.exp(-(((bu - uc) / ru) ** 2) - ((bv - vc) / rv) ** 2)


def _trachea(canvas: Canvas, A: np.ndarray) -> None:
    """The air column of the trachea down to the carina, and the two main bronchi."""
    rs, cs, bu, bv = canvas.box(-0.06, 0.08, -1.4, -0.12)
    A[rs, cs] -= F32(0.22) * ramp(0.045 - np.abs(bu - 0.01), 0.02) * ramp(-0.18 - bv, 0.06)
    for sign in (-1.0, 1.0):
        p0, p1 = (0.01, -0.2), (0.01 + sign * 0.2, -0.06)
        rs, cs, bu, bv = canvas.box(min(p0[0], p1[0]) - 0.05, max(p0[0], p1[0]) + 0.05, -0.25, -0.01)
        bronchus = ramp(0.03 - segment_distance(bu, bv, p0, p1), 0.02)
        if sign > 0:  # where the two bronchi overlap at the carina, do not subtract the air twice
            bronchus *= ramp(bu - 0.01, 0.02)
        A[rs, cs] -= F32(0.22) * bronchus


def _spine(canvas: Canvas, A: np.ndarray, anat: Anatomy) -> None:
    rs, cs, bu, bv = canvas.box(-0.14, 0.14, -2.0, 2.0)
    col = ramp(0.085 - np.abs(bu), 0.03)
    row = 0.75 + 0.25 * np.cos(2 * np.pi * (bv / (anat.rib_gap * 0.95) + anat.rib_phase)) ** 2
    A[rs, cs] += 0.16 * (col * row).astype(F32)


def rib_pattern(u_abs: np.ndarray, v: np.ndarray, anat: Anatomy, posterior: bool) -> np.ndarray:
    """Rib bands over the broadcast grid (0..1): posterior ribs rise then fall laterally, anterior
    ribs fall medially; spacing widens slightly towards the base.

    The band is cos(2 pi (S(v) - g(u))) with S a row function and g a column function, expanded as
    cos S cos g + sin S sin g: two outer products instead of a cosine over the whole image.
    """
    vv = v - anat.apex_v
    stretch = vv * (1.0 - 0.12 * vv)
    if posterior:
        row = stretch / anat.rib_gap + anat.rib_phase
        col = (-0.12 * u_abs + 0.45 * u_abs * u_abs) / anat.rib_gap
    else:
        row = stretch / (anat.rib_gap * 1.15) + anat.rib_phase + 0.5
        col = -0.5 * u_abs / (anat.rib_gap * 1.15)
    row, col = (2 * np.pi * row).astype(F32), (2 * np.pi * col).astype(F32)
    band = np.cos(row) * np.cos(col)
    band += np.sin(row) * np.sin(col)
    band -= F32(0.2)
    np.clip(band, 0.0, 1.0, out=band)
    band *= F32(1.25)
    return band


def draw_ribs(canvas: Canvas, A: np.ndarray, anat: Anatomy) -> None:
    """Posterior ribs (clearly) and anterior ribs (faintly) over the thorax."""
    u, v = canvas.u, canvas.v
    cage = anat.lung_w + 0.07
    rs = canvas.rows(anat.apex_v - 0.12, max(anat.dome_r, anat.dome_l) + 0.35)
    cs = canvas.cols(-cage - 0.03, cage + 0.03)
    sv = v[rs]
    au = np.abs(u[:, cs])
    col_in = ramp(cage - au, 0.04) * ramp(au - 0.07, 0.04)  # (1, W)
    row_in = ramp(sv - (anat.apex_v - 0.08), 0.06)  # (H', 1)
    post = rib_pattern(au, sv, anat, posterior=True)
    post *= col_in * F32(0.10)
    ant = rib_pattern(au, sv, anat, posterior=False)
    ant *= col_in * ramp(au - 0.35, 0.15) * F32(0.04)
    post += ant
    post *= row_in
    A[rs, cs] += post


def _clavicles(canvas: Canvas, A: np.ndarray, anat: Anatomy) -> None:
    """Two bones rising from the sternal notch to the shoulders: a band around a sloped line."""
    for sign in (-1.0, 1.0):
        u0, u1 = sorted((sign * 0.1, sign * 0.9))
        rs, cs, bu, bv = canvas.box(u0 - 0.03, u1 + 0.03, anat.clavicle_v - 0.25, anat.clavicle_v + 0.15)
        centre = anat.clavicle_v + 0.06 - 0.25 * (np.abs(bu) - 0.1)  # (1, W)
        ends = ramp(np.abs(bu) - 0.1, 0.04) * ramp(0.9 - np.abs(bu), 0.06)
        band = ramp(0.035 - np.abs(bv - centre), 0.02)
        band *= ends * F32(0.2)
        A[rs, cs] += band


def _breasts(canvas: Canvas, A: np.ndarray, anat: Anatomy) -> None:
    for sign in (-1.0, 1.0):
        uc, vc = sign * 0.55, 0.38
        rs, cs, bu, bv = canvas.box(uc - 0.6, uc + 0.6, vc - 0.5, vc + 0.4)
        q = 1.0 - ((bu - uc) / 0.5) ** 2 - ((bv - vc) / 0.35) ** 2
        A[rs, cs] += 0.12 * np.sqrt(np.clip(q, 0.0, 1.0)).astype(F32)
