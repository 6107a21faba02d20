"""benchmarks/finding_signal.py: counterfactual twins differ only where the finding is drawn."""

import importlib.util
from pathlib import Path

spec = importlib.util.spec_from_file_location(
    "finding_signal", Path(__file__).resolve().parents[2] / "benchmarks" / "finding_signal.py")
finding_signal = importlib.util.module_from_spec(spec)
spec.loader.exec_module(finding_signal)


def test_findings_carry_a_small_local_share_of_the_pixel_variance():
    res = finding_signal.measure("mimic-like", 24, [16, 32], seed=0)
    assert res["records_with_findings"] > 5
    for size in ("16", "32"):
        r = res["sizes"][size]
        assert r["total_var"] > 100 and 0 < r["share"] < 0.3
        for name, f in r["per_finding"].items():
            # The detector noise has its own random stream: removing a finding moves only the
            # pixels it drew (were the noise re-drawn, about half of all pixels would move).
            assert f["msd"] > 0 and f["moved_pixels"] < 0.3, (size, name, f)
