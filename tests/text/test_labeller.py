"""The rule labeller: CheXpert's 4-report golden sample and single rules (its OpenI score:
tests/apps/test_labeller_openi.py)."""

import csv

import pytest

from mixvlp_ds.text import labeller as L


@pytest.fixture(scope="module")
def chexpert(shared_data):
    return L.ReportLabeller("chexpert14", shared_data / "labelers")


def _gold_rows(shared_data):
    with open(shared_data / "labelers" / "chexpert_labeler" / "labeled_reports.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def test_chexpert_golden_sample(chexpert, shared_data):
    rows = _gold_rows(shared_data)
    assert len(rows) == 4
    for row in rows:
        pred = chexpert.label(row["Reports"])
        want = {k: (None if row[k] == "" else int(float(row[k]))) for k in chexpert.names}
        assert pred == want, row["Reports"]


@pytest.mark.parametrize("text, finding, value", [
    ("No pneumothorax or pleural effusion.", "Pneumothorax", 0),
    ("No focal consolidation, suspicious opacity, large pleural effusion, or pneumothorax.",
     "Pneumothorax", 0),
    ("No pneumothorax but there is a small pleural effusion.", "Pleural Effusion", 1),
    ("Cannot exclude pneumonia.", "Pneumonia", -1),
    ("Possible left lower lobe pneumonia.", "Pneumonia", -1),
    ("Unchanged cardiomegaly.", "Cardiomegaly", 1),
    ("Heart size and pulmonary vascularity appear within normal limits.", "Cardiomegaly", 0),
    ("Pericardial effusion.", "Pleural Effusion", None),     # an `exclude` phrase
    ("There are no XXXX of a pleural effusion.", "Pleural Effusion", 0),  # OpenI's de-id token
])
def test_single_rules(chexpert, text, finding, value):
    assert chexpert.label(text)[finding] == value


def test_no_finding_is_blank_when_an_extra_finding_is_present(chexpert):
    assert chexpert.label("Lungs are clear. No effusion.")["No Finding"] == 1
    assert chexpert.label("Lungs are clear. Mild scoliosis.")["No Finding"] is None


def test_cxr14_space_names(shared_data):
    lab = L.ReportLabeller("cxr14", shared_data / "labelers")
    out = lab.label("Small left effusion. Pleural thickening at the apex. Moderate hiatal hernia.")
    assert list(out) == list(L.CXR14)
    assert out["Effusion"] == 1 and out["Pleural_Thickening"] == 1 and out["Hernia"] == 1
    assert out["Mass"] is None


def test_missing_rules_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="labeller rules not found"):
        L.ReportLabeller("chexpert14", tmp_path)


def test_cli_labels_a_csv(shared_data, tmp_path):
    out = tmp_path / "labels.csv"
    src = shared_data / "labelers" / "chexpert_labeler" / "labeled_reports.csv"
    assert L.main(["--csv", str(src), "--out", str(out), "--labelers", str(shared_data / "labelers")]) == 0
    rows = list(csv.DictReader(open(out, newline="")))
    gold = _gold_rows(shared_data)
    assert [r["Cardiomegaly"] for r in rows] == [g["Cardiomegaly"] for g in gold]


def test_the_rule_folder_is_required_and_the_error_says_what_to_put_there(monkeypatch):
    import pytest

    monkeypatch.delenv("MIXVLP_LABELERS", raising=False)
    with pytest.raises(FileNotFoundError, match=r"pass --labelers DIR \(or set \$MIXVLP_LABELERS\) with the "
                                                r"RadText rule files \(https://github.com/bionlplab/radtext"):
        L.ReportLabeller("chexpert14")
