"""Report sectioning on the real MIMIC example report, real OpenI reports, and edge cases."""

import tarfile
import xml.etree.ElementTree as ET

from mixvlp_ds.text.sections import clean_text, extract_report, last_paragraph, split_sections


def mimic_example(shared_data) -> str:
    return (shared_data / "mimic_cxr_format" / "example_report_from_MIT-LCP_docs.txt").read_text()


def test_mimic_example_sections(shared_data):
    sections = split_sections(mimic_example(shared_data))
    assert list(sections) == ["preamble", "examination", "indication", "technique", "comparison",
                              "findings", "impression"]
    assert sections["preamble"] == "FINAL REPORT"
    assert sections["findings"].startswith("Cardiac size cannot be evaluated.")
    assert sections["findings"].endswith("degenerative changes in the thoracic spine")
    assert sections["impression"] == "Large left pleural effusion"


def test_mimic_example_report_is_findings_then_impression(shared_data):
    text = extract_report(mimic_example(shared_data))
    assert text.startswith("Cardiac size cannot be evaluated. Large left pleural effusion is new. Small")
    # The findings body has no final full stop; the join adds one so impression is its own sentence.
    assert text.endswith("degenerative changes in the thoracic spine. Large left pleural effusion")
    assert "\n" not in text and "  " not in text
    assert "INDICATION" not in text and "year old woman" not in text and "___" not in text


def test_headers_are_case_insensitive_and_synonyms_fold():
    report = "Exam: chest two views\nfindings:\n  Lungs are clear.\n\nConclusion:  No acute process."
    sections = split_sections(report)
    assert sections["examination"] == "chest two views"
    assert sections["findings"] == "Lungs are clear."
    assert sections["impression"] == "No acute process."
    assert extract_report(report) == "Lungs are clear. No acute process."


def test_header_text_on_same_line_and_unknown_caps_header():
    sections = split_sections("WET READ: ABC 10:30 no ptx\nPA AND LATERAL VIEWS OF THE CHEST: done\n"
                              "IMPRESSION: Normal.")
    assert sections["wet read"] == "ABC 10:30 no ptx"  # '10:30' is not a header
    assert sections["pa and lateral views of the chest"] == "done"
    assert sections["impression"] == "Normal."


def test_repeated_section_is_joined():
    sections = split_sections("IMPRESSION: first.\nFINDINGS: f.\nIMPRESSION: second.")
    assert sections["impression"] == "first.\n\nsecond."


def test_fallback_to_last_paragraph_without_findings_or_impression():
    report = ("INDICATION: ___ with cough\n\nCOMPARISON: ___\n\n"
              "The heart is normal in size.\nNo pleural effusion.\n\nNo acute cardiopulmonary process.")
    assert last_paragraph(report) == "No acute cardiopulmonary process."
    assert extract_report(report) == "No acute cardiopulmonary process."
    # A last paragraph that starts with a header loses the header.
    assert extract_report("INDICATION: x\n\nTECHNIQUE: PA and lateral") == "PA and lateral"


def test_headerless_single_paragraph_and_empty():
    assert extract_report("Heart size normal.\n  Lungs clear.") == "Heart size normal. Lungs clear."
    assert extract_report("") == ""
    assert extract_report("   \n\n ") == ""
    assert extract_report(None) == ""
    assert extract_report("FINDINGS:\n\nIMPRESSION:\n") == ""


def test_deid_placeholders_become_one_token():
    assert clean_text("___ year old with ___ ___ pain") == "XXXX year old with XXXX pain"
    assert clean_text("Normal chest x-XXXX. No XXXX XXXX, XXXX of effusion") == \
        "Normal chest x-XXXX. No XXXX of effusion"
    assert clean_text("a\t\tb \n\n c") == "a b c"


def test_real_openi_reports(shared_data):
    """Every OpenI report with a FINDINGS or IMPRESSION section yields non-empty clean text."""
    n = checked = 0
    with tarfile.open(shared_data / "openi_iu" / "NLMCXR_reports.tgz") as tf:
        for m in tf:
            if not m.isfile() or n >= 300:
                continue
            n += 1
            root = ET.fromstring(tf.extractfile(m).read())
            s = {a.get("Label"): a.text or "" for a in root.iter("AbstractText")}
            text = extract_report(f"FINDINGS: {s.get('FINDINGS', '')}\n\n"
                                  f"IMPRESSION: {s.get('IMPRESSION', '')}")
            if s.get("FINDINGS", "").strip() or s.get("IMPRESSION", "").strip():
                checked += 1
                assert text, m.name
                assert "  " not in text and "\n" not in text
                assert "XXXX XXXX" not in text
                first = s["FINDINGS"] if s.get("FINDINGS", "").strip() else s["IMPRESSION"]
                assert text.startswith(clean_text(first).rstrip(".")), m.name  # FINDINGS first
            else:
                assert text == ""
    assert checked > 250
