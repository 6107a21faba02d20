"""The rule labeller scored against NegBio's OpenI gold labels (mixvlp_ds.apps.labeller_openi)."""

import json

from mixvlp_ds.apps import labeller_openi


def test_openi_gold_f1(shared_data, tmp_path):
    """F1 vs NegBio's OpenI gold labels (3,851 reports). The floor is a regression guard, set under
    what the rules reach (micro F1 0.739, see docs/applications.md)."""
    out = tmp_path / "score.json"
    assert labeller_openi.main(["--openi-dir", str(shared_data / "openi_iu"), "--labelers",
                                str(shared_data / "labelers"), "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["reports"] == 3851
    assert res["micro_f1"] > 0.70
    assert res["per_finding"]["Atelectasis"]["f1"] > 0.85
    assert res["per_finding"]["Hernia"]["support"] == 0  # the gold file has no hernia positive
