"""Report text that agrees with the image, and the CheXpert-style labels read from it.

Labels come from what the report says, as MIMIC-CXR's CheXpert labels do:

* a present finding is stated (label 1), sometimes hedged ("possible", "cannot be excluded":
  label -1; milder cases are hedged more often), sometimes not mentioned at all (label null);
* an absent finding is sometimes negated (label 0: "No pneumothorax."), rarely hedged (-1),
  otherwise not mentioned (null);
* No Finding is 1 when no pathology is labelled 1 or -1 (support devices do not count), else null.

Every mention sits in its own sentence and uses the finding's keyword (`KEYWORDS`), so a test
can check label/text agreement sentence by sentence. The text is what `mixvlp_ds.text.sections`
returns for a real report: FINDINGS then IMPRESSION, without headers, whitespace collapsed.
Two styles: "mimic" (longer, ICU-flavoured phrasing) and "openi" (terse outpatient phrasing).
"""

from __future__ import annotations

import numpy as np

from mixvlp_ds.labels import CHEXPERT14
from mixvlp_ds.shard.synth.findings import Finding
from mixvlp_ds.shard.synth.institutions import PATHOLOGIES

# Regex that any sentence mentioning the finding contains (and no other finding's sentence does).
KEYWORDS = {
    "Atelectasis": r"atelecta",
    "Cardiomegaly": r"cardiomegaly|heart|cardiac silhouette",
    "Consolidation": r"consolidat",
    "Edema": r"edema",
    "Enlarged Cardiomediastinum": r"mediastin",
    "Fracture": r"fracture",
    "Lung Lesion": r"nodule|mass\b|lesion",
    "Lung Opacity": r"opacit",
    "Pleural Effusion": r"effusion",
    "Pleural Other": r"thickening|apical cap",
    "Pneumonia": r"pneumonia",
    "Pneumothorax": r"pneumothora",
    "Support Devices": r"tube|catheter|pacemaker|device",
}
HEDGES = (
    "possible",
    "cannot be excluded",
    "cannot exclude",
    "may represent",
    "questionable",
    "suspicious for",
)
NEGATIONS = ("no ", "without", "normal", "not enlarged", "negative for")

# P(hedged | present) = HEDGE + 0.25 * (1 - severity); P(omitted | present); P(negated | absent).
HEDGE = {"Pneumonia": 0.3, "Atelectasis": 0.15, "Consolidation": 0.12, "Lung Opacity": 0.05}
OMIT = {"Fracture": 0.15, "Support Devices": 0.05, "Pleural Other": 0.1}
NEGATE = {
    "Pneumothorax": 0.75,
    "Pleural Effusion": 0.7,
    "Consolidation": 0.5,
    "Edema": 0.3,
    "Cardiomegaly": 0.45,
    "Enlarged Cardiomediastinum": 0.3,
    "Pneumonia": 0.15,
    "Fracture": 0.1,
    "Lung Opacity": 0.1,
    "Atelectasis": 0.05,
    "Lung Lesion": 0.08,
    "Pleural Other": 0.03,
    "Support Devices": 0.02,
}
FALSE_HEDGE = 0.015

_SIZE = ("small", "small", "moderate", "large")


def size_word(sev: float) -> str:
    return _SIZE[min(3, int(sev * 4))]


def _sided(f: Finding) -> str:
    return "bilateral" if f.side == "bilateral" else f.side


POSITIVE = {
    "Atelectasis": (
        "{side} basilar atelectasis.",
        "Plate-like atelectasis at the {side} base.",
        "{Side} lower lobe atelectasis.",
        "Linear atelectasis in the {side} lung base.",
    ),
    "Cardiomegaly": (
        "Cardiomegaly.",
        "The heart is enlarged.",
        "Moderate cardiomegaly.",
        "The cardiac silhouette is enlarged.",
    ),
    "Consolidation": (
        "{Side} {zone} lobe consolidation.",
        "Focal consolidation in the {side} {zone} lung.",
        "There is consolidation of the {side} {zone} zone.",
    ),
    "Edema": (
        "Pulmonary edema.",
        "Mild interstitial edema.",
        "Perihilar edema, consistent with fluid overload.",
        "Findings are consistent with pulmonary edema.",
    ),
    "Enlarged Cardiomediastinum": (
        "The mediastinum is widened.",
        "Enlarged cardiomediastinal silhouette.",
        "Widening of the superior mediastinum.",
    ),
    "Fracture": (
        "{Side} rib fracture.",
        "There is a fracture of a {side} lateral rib.",
        "Acute-appearing {side} rib fracture.",
    ),
    "Lung Lesion": (
        "{Kind} in the {side} {zone} lung.",
        "A {size} {kind} projects over the {side} {zone} zone.",
        "{Side} {zone} lobe {kind}.",
    ),
    "Lung Opacity": (
        "{Side} {zone} lung opacity.",
        "Patchy opacities in the {side} {zone} zone.",
        "Hazy opacity at the {side} {zone} lung.",
    ),
    "Pleural Effusion": (
        "{Size} {side} pleural effusion.",
        "There is a {size} {side} pleural effusion.",
        "{Size} {side} effusion with blunting of the costophrenic angle.",
    ),
    "Pleural Other": (
        "{Side} pleural thickening.",
        "{Side} apical cap.",
        "Pleural thickening along the {side} chest wall.",
    ),
    "Pneumonia": (
        "{Side} {zone} lobe pneumonia.",
        "Findings consistent with {side} pneumonia.",
        "Pneumonia in the {side} {zone} lung.",
    ),
    "Pneumothorax": (
        "{Size} {side} pneumothorax.",
        "There is a {size} {side} apical pneumothorax.",
        "{Side} pneumothorax is present.",
    ),
    "Support Devices": (
        "{Devices} in place.",
        "Interval placement of {devices}.",
        "{Devices} in standard position.",
    ),
}
HEDGED = {
    "Atelectasis": ("Possible {side} basilar atelectasis.", "Questionable atelectasis at the {side} base."),
    "Cardiomegaly": (
        "Possible cardiomegaly.",
        "The heart may be mildly enlarged, questionable cardiomegaly.",
    ),
    "Consolidation": (
        "Consolidation in the {side} {zone} zone cannot be excluded.",
        "Possible {side} {zone} consolidation.",
    ),
    "Edema": ("Possible mild edema.", "Edema cannot be excluded."),
    "Enlarged Cardiomediastinum": (
        "Possible widening of the mediastinum.",
        "Mediastinal widening cannot be excluded.",
    ),
    "Fracture": ("Possible {side} rib fracture.", "Questionable fracture of a {side} rib."),
    "Lung Lesion": ("Possible {kind} in the {side} lung.", "A {side} lung nodule cannot be excluded."),
    "Lung Opacity": ("Possible {side} {zone} opacity.", "Questionable opacity in the {side} lung."),
    "Pleural Effusion": ("Possible {size} {side} pleural effusion.", "A small effusion cannot be excluded."),
    "Pleural Other": ("Possible {side} pleural thickening.",),
    "Pneumonia": (
        "Pneumonia cannot be excluded.",
        "Findings may represent pneumonia.",
        "Findings suspicious for pneumonia.",
        "Possible {side} {zone} pneumonia.",
    ),
    "Pneumothorax": ("Possible small {side} pneumothorax.", "A tiny pneumothorax cannot be excluded."),
    "Support Devices": ("Questionable position of the {devices}.", "Possible {devices} malposition."),
}
NEGATIVE = {
    "Atelectasis": ("No atelectasis.",),
    "Cardiomegaly": ("Heart size is normal.", "No cardiomegaly.", "The heart is not enlarged."),
    "Consolidation": ("No focal consolidation.", "No consolidation."),
    "Edema": ("No pulmonary edema.", "No edema."),
    "Enlarged Cardiomediastinum": (
        "The cardiomediastinal silhouette is normal.",
        "Normal mediastinal contours.",
    ),
    "Fracture": ("No displaced fracture.", "No acute rib fracture."),
    "Lung Lesion": ("No suspicious nodule.",),
    "Lung Opacity": ("No focal opacity.",),
    "Pleural Effusion": ("No pleural effusion.", "No effusion."),
    "Pleural Other": ("No pleural thickening.",),
    "Pneumonia": ("No evidence of pneumonia.",),
    "Pneumothorax": ("No pneumothorax.", "There is no pneumothorax."),
    "Support Devices": ("No tubes or devices.",),
}
# Negations merged into one sentence, as radiologists write them ("No effusion or pneumothorax.").
PAIRED_NEGATIONS = {
    ("Pleural Effusion", "Pneumothorax"): (
        "No pleural effusion or pneumothorax.",
        "No effusion or pneumothorax.",
        "There is no pleural effusion or pneumothorax.",
    )
}
# Impression phrasing: a short restatement of each positive (hedged ones get "Possible ...").
SHORT = {
    "Atelectasis": "{side} basilar atelectasis.",
    "Cardiomegaly": "cardiomegaly.",
    "Consolidation": "{side} {zone} consolidation.",
    "Edema": "pulmonary edema.",
    "Enlarged Cardiomediastinum": "widened mediastinum.",
    "Fracture": "{side} rib fracture.",
    "Lung Lesion": "{side} {zone} lung {kind}.",
    "Lung Opacity": "{side} {zone} opacity.",
    "Pleural Effusion": "{size} {side} pleural effusion.",
    "Pleural Other": "{side} pleural thickening.",
    "Pneumonia": "{side} pneumonia.",
    "Pneumothorax": "{size} {side} pneumothorax.",
    "Support Devices": "{devices} as above.",
}
FILLERS = {
    "mimic": (
        "The lungs are otherwise well expanded.",
        "Comparison is made to the prior study.",
        "Degenerative changes of the thoracic spine.",
    ),
    "openi": ("Lungs are otherwise clear.", "Stable appearance of the chest.", "XXXX degenerative changes."),
}
NORMAL_IMPRESSION = {
    "mimic": ("No acute cardiopulmonary process.", "No acute intrathoracic process."),
    "openi": ("No acute cardiopulmonary abnormality.", "Normal chest.", "No active disease."),
}
# The order sections appear in: devices, lungs, pleura, heart and mediastinum, bones.
ORDER = (
    "Support Devices",
    "Lung Opacity",
    "Consolidation",
    "Pneumonia",
    "Edema",
    "Atelectasis",
    "Lung Lesion",
    "Pleural Effusion",
    "Pneumothorax",
    "Pleural Other",
    "Cardiomegaly",
    "Enlarged Cardiomediastinum",
    "Fracture",
)


def decide_labels(findings: dict[str, Finding], rng: np.random.Generator) -> dict[str, int | None]:
    """What the report will say about each finding (1 / 0 / -1 / None), given the true findings."""
    labels: dict[str, int | None] = {}
    for name in ORDER:
        f = findings.get(name)
        r = rng.random()
        if f is not None:
            hedge = HEDGE.get(name, 0.03) + 0.25 * (1.0 - f.severity)
            omit = OMIT.get(name, 0.03)
            labels[name] = None if r < omit else (-1 if r < omit + hedge else 1)
        else:
            false_hedge = 0.0 if name == "Support Devices" else FALSE_HEDGE  # nobody hedges an absent tube
            labels[name] = -1 if r < false_hedge else (0 if r < false_hedge + NEGATE[name] else None)
    any_path = any(labels[p] in (1, -1) for p in PATHOLOGIES)
    labels["No Finding"] = None if any_path else 1
    return {name: labels[name] for name in CHEXPERT14}


def _fill(template: str, f: Finding | None, rng: np.random.Generator) -> str:
    side = _sided(f) if f and f.side else ("right", "left")[int(rng.integers(2))]
    zone = f.zone if f and f.zone else "lower"
    kind = f.kind if f and f.kind and f.name == "Lung Lesion" else "nodule"
    devices = f.kind.replace("+", " and ") if f and f.name == "Support Devices" else "support devices"
    size = size_word(f.severity) if f else "small"
    text = template.format(
        side=side,
        zone=zone,
        kind=kind,
        devices=devices,
        size=size,
        Side=side.capitalize(),
        Kind=kind.capitalize(),
        Devices=devices.capitalize(),
        Size=size.capitalize(),
    )
    return text[0].upper() + text[1:]


def _pick(options: tuple[str, ...], rng: np.random.Generator) -> str:
    return options[int(rng.integers(len(options)))]


def write_report(
    findings: dict[str, Finding], labels: dict[str, int | None], style: str, rng: np.random.Generator
) -> tuple[str, dict[str, int | None]]:
    """FINDINGS + IMPRESSION text stating exactly the returned labels (see module docstring).

    The labels come back unchanged except for one style rule: a normal OpenI-style report is often
    a one-line impression ("Normal chest."), whose negations are then not stated (0 -> null)."""
    labels = dict(labels)
    if style == "openi" and all(labels[n] in (0, None) for n in ORDER) and rng.random() < 0.4:
        labels.update({n: None for n in ORDER if labels[n] == 0})
        return _pick(NORMAL_IMPRESSION[style], rng), labels
    sentences: list[str] = []
    negated = [n for n in ORDER if labels[n] == 0]
    for (a, b), options in PAIRED_NEGATIONS.items():
        if a in negated and b in negated and rng.random() < 0.7:
            negated = [n for n in negated if n not in (a, b)]
            sentences.append(_pick(options, rng))
    for name in ORDER:
        value = labels[name]
        f = findings.get(name)
        if value == 1:
            sentences.append(_fill(_pick(POSITIVE[name], rng), f, rng))
        elif value == -1:
            sentences.append(_fill(_pick(HEDGED[name], rng), f, rng))
    sentences += [_pick(NEGATIVE[n], rng) for n in negated]
    if rng.random() < 0.35:
        sentences.append(_pick(FILLERS[style], rng))
    if style == "openi" or rng.random() < 0.3:  # terse styles shuffle; otherwise keep anatomic order
        order = rng.permutation(len(sentences))
        sentences = [sentences[i] for i in order]
    # Impression: the (at most three) most important positives, most important first.
    positives = [n for n in ORDER[1:] + ORDER[:1] if labels[n] in (1, -1)][:3]
    impression = [
        _fill(("possible " if labels[n] == -1 else "") + SHORT[n], findings.get(n), rng) for n in positives
    ] or [_pick(NORMAL_IMPRESSION[style], rng)]
    return " ".join(sentences + impression), labels


def _is_negation(sentence: str) -> bool:
    s = sentence.lower()
    return any(s.startswith(c) or f" {c}" in s for c in NEGATIONS)
