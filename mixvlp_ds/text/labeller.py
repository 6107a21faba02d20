"""A rule-based report labeller: finding mentions, then negation and uncertainty, per sentence.

It reads the public CheXpert / RadText rule files in place (nothing is copied into this repo):

    <labelers>/radtext/chexpert_phrases.yml     mention stems for the CheXpert-14 space
    <labelers>/radtext/cxr14_phrases_v2.yml     mention stems for the ChestX-ray14 space
    <labelers>/radtext/patterns/regex_*.yml     negation / uncertainty regexes, finding slot XXXXX

`<labelers>` is a required folder (`--labelers DIR` or $MIXVLP_LABELERS): the rule files are
RadText's and CheXpert's (https://github.com/bionlplab/radtext, `resources/`; MIT), and they are
read where the user keeps them. The package ships no copy of third-party rules, and a dependency
on the radtext package would pull a parser stack this labeller does not use.

Rules (the parser-free reading of CheXpert's three stages):
1. Sentences: the report is split at '.', '!', '?', ';' followed by space, and at line breaks.
2. Mentions: every `include` stem of a finding (a regex, case-insensitive) found in a sentence,
   widened to whole words, and dropped when it overlaps one of that finding's `exclude` phrases.
3. Each mention is replaced by a slot token and the sentence is tried against, in order:
   pre-negation uncertainty + double negation ("cannot exclude X") -> uncertain (-1);
   negation -> negative (0); post-negation uncertainty -> uncertain (-1); otherwise positive (1).
   The radtext slot XXXXX becomes the mention plus an allowed gap of words before it:
   - negation patterns: up to 4 words of the same clause ("no *focal airspace* consolidation",
     "no *edema or* pneumonia"); words that open a new clause (but, however, which, is, are ...)
     end the gap, so "no pneumothorax but there is an effusion" keeps the effusion positive;
   - uncertainty patterns: only earlier members of a list ("may reflect *atelectasis or*
     consolidation"), so "minimal *patchy* airspace disease" stays positive.
   Patterns without an XXXXX slot (rub20, and rub120 whose slot is misspelt XXX) are skipped.
   Negation rules of our own cover telegraphic reports ("X normal", "X clear"); rn41 is replaced
   by a version without "unchanged" ("unchanged cardiomegaly" is present); three uncertainty
   rules of our own: "could be secondary/due/related to X", "suggests X", "X versus Y".
   Negation patterns whose slot opens them ("X is within normal limits") also allow up to 4
   list words after the mention ("heart size *and pulmonary vascularity* appear normal").
4. A report's label for a finding: 1 if any mention is positive, else -1 if any is uncertain,
   else 0 if any is negative, else None (not mentioned).
5. "No Finding" (CheXpert space): 1 when no other finding except Support Devices is 1 or -1
   and none of the No Finding list's extra findings (emphysema, scoliosis, ...) is positive
   or uncertain; otherwise None.

    python -m mixvlp_ds.text.labeller --csv reports.csv --text-column Reports --out labels.csv
    python -m mixvlp_ds.text.labeller --shards shards/openi --split test --out labels.jsonl

Its F1 against NegBio's OpenI gold labels: `python -m mixvlp_ds.apps.labeller_openi`.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from mixvlp_ds.labels import CHEXPERT14, CXR14

WHERE = ("the RadText rule files (https://github.com/bionlplab/radtext, folder resources/: "
         "chexpert_phrases.yml, cxr14_phrases_v2.yml, patterns/) in <DIR>/radtext")
SLOT = "qqfindingqq"  # a token no report contains (OpenI's own placeholder is "XXXX")

PHRASE_FILES = {"chexpert14": "chexpert_phrases.yml", "cxr14": "cxr14_phrases_v2.yml"}
# RadText names -> the label space's names.
CXR14_NAMES = {"Pleural Effusion": "Effusion", "Pleural Thickening": "Pleural_Thickening"}

_BREAK = r"(?:but|however|although|though|except|which|who|that|is|are|was|were|there|with|and\s+no)"
NEG_GAP = rf"(?:(?!{_BREAK}\b)[\w\-/]+,?\s+){{0,10}}"
NEG_GAP_AFTER = rf"(?:(?:,\s+|\s+)(?!{_BREAK}\b)(?:and\s+)?[\w\-/]+){{0,4}}?"
UNC_GAP = r"(?:[\w\-/]+(?:,\s+|\s+(?:and|or|nor|versus|vs\.?)\s+)){0,3}"
# rn41 "(normal|normal size|unchanged|unremarkable) XXXXX" would call "unchanged cardiomegaly" absent:
# it is replaced by the same rule without "unchanged".
DROPPED = {"rn41"}
EXTRA_NEGATION = [r"(?:normal|normal\s+size|unremarkable)\s+" + NEG_GAP + SLOT,
                  SLOT + NEG_GAP_AFTER + r"\s+(?:size\s+)?normal", SLOT + r"\s+(?:are\s+|is\s+)?clear"]
EXTRA_UNCERTAINTY = [r"(?:could|may|might)\s+(?:be\s+)?(?:secondary|due|related)\s+to\s+" + NEG_GAP + SLOT,
                     r"suggests?\s+" + UNC_GAP + SLOT, SLOT + r"\s+(?:versus|vs\.?)\s"]
SENTENCE_SPLIT = re.compile(r"(?<=[.!?;])\s+|\n+")


def labelers_dir(path: str | Path | None = None) -> Path:
    """The rule folder: `path`, else $MIXVLP_LABELERS; FileNotFoundError says what to put there."""
    given = path or os.environ.get("MIXVLP_LABELERS")
    if not given:
        raise FileNotFoundError(f"the labeller needs its rule folder: pass --labelers DIR (or set "
                                f"$MIXVLP_LABELERS) with {WHERE}")
    p = Path(given)
    if not (p / "radtext").is_dir():
        raise FileNotFoundError(f"labeller rules not found: {p}/radtext; expected {WHERE}")
    return p


def _read_yaml(path: Path):
    try:
        return yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ValueError(f"cannot read labeller rules {path}: {e}") from e


def _load_patterns(pdir: Path, name: str, gap: str, gap_after: str = "") -> list[tuple[str, re.Pattern]]:
    out = []
    for item in _read_yaml(pdir / name) or []:
        pat = item["pattern"]
        if "XXXXX" not in pat or item["id"] in DROPPED:
            continue
        pat = pat.replace(" ", r"\s+").replace("XXXXX", gap + SLOT + gap_after)
        out.append((item["id"], re.compile(pat, re.I)))
    return out


@dataclass
class Finding:
    name: str
    include: list[re.Pattern]
    exclude: list[re.Pattern] = field(default_factory=list)


class ReportLabeller:
    """Labels report texts in one label space ("chexpert14" or "cxr14")."""

    def __init__(self, space: str = "chexpert14", labelers: str | Path | None = None):
        if space not in PHRASE_FILES:
            raise ValueError(f"unknown label space {space!r}; known: {sorted(PHRASE_FILES)}")
        root = labelers_dir(labelers)
        self.space = space
        self.names = CHEXPERT14 if space == "chexpert14" else CXR14
        phrases = _read_yaml(root / "radtext" / PHRASE_FILES[space])
        self.findings: list[Finding] = []
        self.no_finding_extras: Finding | None = None
        for raw_name, spec in phrases.items():
            name = CXR14_NAMES.get(raw_name, raw_name) if space == "cxr14" else raw_name
            f = Finding(name, [re.compile(s, re.I) for s in spec.get("include", [])],
                        [re.compile(s.strip(), re.I) for s in spec.get("exclude", []) or []])
            if name == "No Finding":
                self.no_finding_extras = f
            elif name in self.names:
                self.findings.append(f)
        missing = set(self.names) - {f.name for f in self.findings} - {"No Finding"}
        if missing:
            raise ValueError(f"{root}/radtext/{PHRASE_FILES[space]} has no phrases for {sorted(missing)}")
        pdir = root / "radtext" / "patterns"
        self.uncertain_first = (_load_patterns(pdir, "regex_uncertainty_pre_negation.yml", UNC_GAP)
                                + _load_patterns(pdir, "regex_double_negation.yml", NEG_GAP))
        self.negation = (_load_patterns(pdir, "regex_negation.yml", NEG_GAP, NEG_GAP_AFTER)
                         + [(f"own{i}", re.compile(p, re.I)) for i, p in enumerate(EXTRA_NEGATION)])
        self.uncertain_after = (_load_patterns(pdir, "regex_uncertainty_post_negation.yml", UNC_GAP)
                                + [(f"ownu{i}", re.compile(p, re.I))
                                   for i, p in enumerate(EXTRA_UNCERTAINTY)])

    # --------------------------------------------------------------- mentions
    @staticmethod
    def _mentions(sentence: str, finding: Finding) -> list[tuple[int, int]]:
        """Whole-word spans of a finding's mentions in one sentence, merged, exclusions removed."""
        excluded = [m.span() for p in finding.exclude for m in p.finditer(sentence)]
        spans = []
        for p in finding.include:
            for m in p.finditer(sentence):
                s, e = m.span()
                if s == e or any(s < xe and xs < e for xs, xe in excluded):
                    continue
                while s > 0 and sentence[s - 1].isalnum():
                    s -= 1
                while e < len(sentence) and sentence[e].isalnum():
                    e += 1
                spans.append((s, e))
        merged: list[tuple[int, int]] = []
        for s, e in sorted(spans):
            if merged and s <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(e, merged[-1][1]))
            else:
                merged.append((s, e))
        return merged

    def classify_mention(self, sentence: str, span: tuple[int, int]) -> tuple[int, str]:
        """1 / 0 / -1 for one mention, and the id of the rule that decided it ('' = default)."""
        text = sentence[:span[0]] + SLOT + sentence[span[1]:]
        for pid, p in self.uncertain_first:
            if p.search(text):
                return -1, pid
        for pid, p in self.negation:
            if p.search(text):
                return 0, pid
        for pid, p in self.uncertain_after:
            if p.search(text):
                return -1, pid
        return 1, ""

    # --------------------------------------------------------------- reports
    def label(self, report: str) -> dict[str, int | None]:
        """{finding: 1 | 0 | -1 | None} for one report, in this labeller's label space order."""
        found: dict[str, list[int]] = {}
        extras: list[int] = []
        for sentence in SENTENCE_SPLIT.split(report or ""):
            sentence = " ".join(sentence.split())
            if not sentence:
                continue
            for f in self.findings:
                for span in self._mentions(sentence, f):
                    found.setdefault(f.name, []).append(self.classify_mention(sentence, span)[0])
            if self.no_finding_extras is not None:
                extras += [self.classify_mention(sentence, s)[0]
                           for s in self._mentions(sentence, self.no_finding_extras)]
        out: dict[str, int | None] = {}
        for name in self.names:
            v = found.get(name)
            out[name] = None if not v else (1 if 1 in v else -1 if -1 in v else 0)
        if "No Finding" in out:
            others = [n for n in self.names if n not in ("No Finding", "Support Devices")]
            abnormal = any(out[n] in (1, -1) for n in others)
            abnormal |= any(v in (1, -1) for v in extras)
            out["No Finding"] = None if abnormal else 1
        return out


# ----------------------------------------------------------------------------- CLI


def _iter_shard_reports(shard_dir: str, split: str):
    """(key, report) of one split of a local WebDataset shard folder (the index.json layout)."""
    import tarfile

    d = Path(shard_dir)
    index = json.loads((d / "index.json").read_text())
    for shard in index["splits"].get(split, {}).get("shards", []):
        with tarfile.open(d / shard["file"]) as tar:
            for member in tar:
                if member.name.endswith(".txt"):
                    yield member.name[: -len(".txt")], tar.extractfile(member).read().decode("utf-8")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mixvlp_ds.text.labeller", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--csv", help="CSV of reports (one per row)")
    src.add_argument("--shards", help="a shard folder (index.json); labels its reports")
    p.add_argument("--text-column", default="Reports")
    p.add_argument("--split", default="train")
    p.add_argument("--space", default="chexpert14", choices=sorted(PHRASE_FILES))
    p.add_argument("--labelers", default=None, help="rule folder holding radtext/ (or $MIXVLP_LABELERS)")
    p.add_argument("--out", default=None, help="output CSV (--csv) or JSONL (--shards)")
    args = p.parse_args(argv)
    lab = ReportLabeller(args.space, args.labelers)
    out = open(args.out, "w", newline="") if args.out else sys.stdout
    try:
        if args.csv:
            with open(args.csv, newline="") as fh:
                reader = csv.DictReader(fh)
                if args.text_column not in (reader.fieldnames or []):
                    raise SystemExit(f"{args.csv}: no column {args.text_column!r} (has {reader.fieldnames})")
                w = csv.writer(out)
                w.writerow([args.text_column, *lab.names])
                for row in reader:
                    labels = lab.label(row[args.text_column])
                    cells = ["" if v is None else f"{v:.1f}" for v in labels.values()]
                    w.writerow([row[args.text_column], *cells])
        else:
            for key, text in _iter_shard_reports(args.shards, args.split):
                out.write(json.dumps({"key": key, "space": lab.space, "values": lab.label(text)}) + "\n")
    finally:
        if out is not sys.stdout:
            out.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
