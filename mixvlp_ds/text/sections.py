"""Radiology report sectioning: the text a model sees is FINDINGS + IMPRESSION, cleaned.

Reports arrive in two shapes:

* MIMIC-CXR style free text with section headers at line starts ("FINDINGS:", "IMPRESSION:",
  "INDICATION:", ...; a header may be followed by text on the same line or on the next lines);
* OpenI XML, whose `<AbstractText Label=...>` sections the OpenI source turns into the same
  "LABEL: text" lines before calling `extract_report`.

`split_sections` finds headers case-insensitively: a known title (list below, from the NegBio /
MIMIC-CXR section titles) or any ALL-CAPS phrase ending in ':' at the start of a line. Synonyms
are folded onto one name ("CONCLUSION:" -> "impression", "FINDINGS AND IMPRESSION:" ->
"findings"). Text before the first header is returned as "preamble" (e.g. "FINAL REPORT").

`extract_report` returns FINDINGS then IMPRESSION; when a report has neither, it falls back to
the last paragraph, as MIT-LCP's `create_section_files.py` does. Cleaning:

* whitespace (including line breaks) collapsed to single spaces;
* de-identification placeholders, MIMIC's "___" and OpenI's "XXXX" (also inside words, such as
  "x-XXXX"), are normalised to the single word "XXXX" (consecutive ones collapse into one), so
  both institutions show the model the same one-word slot rather than punctuation runs;
* an empty or whitespace-only report gives "".
"""

from __future__ import annotations

import re

# Canonical name <- header spellings (lower case, without the colon).
_ALIASES = {
    "findings": ("findings", "finding", "findings and impression", "findings/impression",
                 "report", "description"),
    "impression": ("impression", "impressions", "conclusion", "conclusions", "opinion", "summary"),
    "indication": ("indication", "indications", "reason for exam", "reason for examination",
                   "reason for this examination", "clinical indication", "clinical information"),
    "history": ("history", "clinical history", "patient history", "medical condition"),
    "comparison": ("comparison", "comparisons", "comparison exam", "comparison film", "reference exam"),
    "technique": ("technique", "procedure"),
    "examination": ("examination", "exam", "type of examination"),
    "addendum": ("addendum",),
    "wet read": ("wet read",),
    "notification": ("notification",),
    "recommendation": ("recommendation", "recommendations", "comment", "comments"),
}
_CANONICAL = {spelling: name for name, spellings in _ALIASES.items() for spelling in spellings}

# A header: at a line start, either a known title in any case, or an ALL-CAPS phrase (letters,
# spaces, '/', '&', '(', ')', '-', ','), followed by ':'. The known-title branch is tried first.
_KNOWN = "|".join(sorted((re.escape(s) for s in _CANONICAL), key=len, reverse=True))
_HEADER = re.compile(
    rf"^[ \t]*(?P<title>(?i:{_KNOWN})|[A-Z][A-Z /&(),-]{{1,60}}?)[ \t]*:", re.MULTILINE)
_PLACEHOLDER = re.compile(r"_{2,}|X{2,}")
_REPEATED_PLACEHOLDER = re.compile(r"XXXX(?:[\s,]*XXXX)+")
_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n")
_WS = re.compile(r"\s+")


def clean_text(text: str) -> str:
    """Collapse whitespace and normalise de-identification placeholders to one "XXXX"."""
    text = _PLACEHOLDER.sub("XXXX", text)
    text = _REPEATED_PLACEHOLDER.sub("XXXX", text)
    return _WS.sub(" ", text).strip()


def section_name(title: str) -> str:
    """Canonical section name of a header title: 'Conclusion' -> 'impression'."""
    key = _WS.sub(" ", title.strip().lower())
    return _CANONICAL.get(key, key)


def split_sections(text: str) -> dict[str, str]:
    """Report text -> {section name: raw body}, in order of appearance.

    Names are canonical lower-case ("findings", "impression", ...; unknown ALL-CAPS headers keep
    their own lower-cased title). A repeated section has its bodies joined by a blank line.
    Text before the first header is "preamble"; bodies keep their line breaks (clean them with
    `clean_text`). Empty bodies are kept as "" so callers can tell "present but empty".
    """
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    sections: dict[str, str] = {}
    matches = list(_HEADER.finditer(text))
    starts = [m.start() for m in matches] + [len(text)]
    preamble = text[: starts[0]].strip()
    if preamble:
        sections["preamble"] = preamble
    for m, end in zip(matches, starts[1:], strict=True):
        name = section_name(m.group("title"))
        body = text[m.end(): end].strip()
        sections[name] = f"{sections[name]}\n\n{body}".strip() if name in sections else body
    return sections


def last_paragraph(text: str) -> str:
    """The last non-empty paragraph (blocks separated by blank lines)."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    paragraphs = [p.strip() for p in _PARAGRAPH_BREAK.split(text) if p.strip()]
    return paragraphs[-1] if paragraphs else ""


def extract_report(text: str | None) -> str:
    """FINDINGS + IMPRESSION of a report, cleaned; the last paragraph when it has neither; "" if empty."""
    if not text or not text.strip():
        return ""
    sections = split_sections(text)
    parts = [sections.get("findings", ""), sections.get("impression", "")]
    if not any(p.strip() for p in parts):
        if "findings" in sections or "impression" in sections:
            return ""  # the sections exist but are empty: there is no narrative to fall back to
        last = last_paragraph(text)
        header = _HEADER.match(last)
        parts = [last[header.end():] if header else last]
    parts = [clean_text(p) for p in parts if p.strip()]
    # Join as sentences: a FINDINGS body without a final full stop would run into the IMPRESSION.
    return " ".join(p if p.endswith((".", "!", "?")) or i == len(parts) - 1 else p + "."
                    for i, p in enumerate(parts))
