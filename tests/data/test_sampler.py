"""The mixing sampler on fake records: scenario shares, re-pairing rules, buffers."""

import json
from collections import Counter

import numpy as np
import pytest

from mixvlp_ds.config import ConfigError
from mixvlp_ds.data.config import DataConfig, SourceSpec, resolve_sources
from mixvlp_ds.data.reader import Record
from mixvlp_ds.data.sampler import MixingSampler, batch_shares
from mixvlp_ds.data.subset import in_paired_subset


def fake(source: str, n: int, text=True, image=True, per_study=3) -> list[Record]:
    out = []
    for i in range(n):
        fields = {"meta.json": json.dumps({"patient_id": f"{source}p{i // per_study}"}).encode(),
                  "labels.json": b'{"values": {}}'}
        if text:
            fields["txt"] = b"report"
        if image:
            fields["img.32.png"] = b""
        out.append(Record(f"{source}/{i}", source, source, f"{source}p{i // per_study}",
                          f"{source}s{i // per_study}", fields))
    return out


def run(cfg: DataConfig, records, seed=0, **kw):
    cfg.validate()
    s = MixingSampler(resolve_sources(cfg), np.random.default_rng(seed), cfg.subset_seed,
                      cfg.negative_rate,
                      shuffle_buffer=kw.get("shuffle", 200), image_pool=kw.get("image_pool", 64),
                      report_pool=kw.get("report_pool", 128))
    return list(s(records)), s


def mixed(*lists, seed=0):
    recs = [r for lst in lists for r in lst]
    return [recs[i] for i in np.random.default_rng(seed).permutation(len(recs))]


def expected_paired(records, percent):
    return sum(in_paired_subset(r.patient_id, percent, 0) for r in records)


def test_baseline_keeps_only_the_paired_subset():
    recs = fake("a", 3000)
    cfg = DataConfig(sources=[SourceSpec("a", "x")], scenario="baseline", paired_percent=10)
    out, s = run(cfg, recs)
    assert {t.kind for t in out} == {"paired"}
    assert len(out) == expected_paired(recs, 10)
    assert all(t.image is t.text and in_paired_subset(t.image.patient_id, 10, 0) for t in out)
    assert s.counts["dropped"] == 3000 - len(out)


def test_mixup1_repairs_the_rest_within_the_institution_never_same_study():
    recs = fake("a", 3000)
    cfg = DataConfig(sources=[SourceSpec("a", "x")], scenario="mixup1", paired_percent=20)
    out, _ = run(cfg, recs)
    kinds = Counter(t.kind for t in out)
    assert kinds["paired"] == expected_paired(recs, 20)
    assert kinds["paired"] + kinds["repaired"] == 3000  # every image used once
    for t in out:
        if t.kind == "repaired":
            assert t.pair == 0.0 and t.image.study != t.text.study and t.text.source == "a"
        else:
            assert t.pair == 1.0 and t.image is t.text


def test_mixup2_couples_every_image_of_the_second_institution_with_reports_of_the_first():
    a, b = fake("a", 1500), fake("b", 1000, text=False)
    cfg = DataConfig(sources=[SourceSpec("a", "x"), SourceSpec("b", "y", role="image_only")],
                     scenario="mixup2", paired_percent=5)
    out, s = run(cfg, mixed(a, b))
    from_b = [t for t in out if t.image.source == "b"]
    assert len(from_b) == 1000 and s.counts["unpairable"] == 0
    assert all(t.kind == "repaired" and t.text.source == "a" for t in from_b)
    assert sum(t.kind == "paired" for t in out) == expected_paired(a, 5)
    assert len(out) == 2500


def test_shares_over_many_batches_match_the_configuration():
    """Realised per-batch shares, averaged over batches, equal the expected shares within sampling error."""
    a, b = fake("a", 4000), fake("b", 2000, text=False)
    cfg = DataConfig(sources=[SourceSpec("a", "x"), SourceSpec("b", "y", role="image_only")],
                     scenario="mixup2", paired_percent=30, negative_rate=0.2)
    out, _ = run(cfg, mixed(a, b))
    shares = [batch_shares(out[i:i + 64]) for i in range(0, len(out) - 63, 64)]
    mean = {k: np.mean([s.get(k, 0.0) for s in shares]) for k in shares[0]}
    p_paired = expected_paired(a, 30) * 0.8 / 6000
    n = len(shares) * 64
    for key, p in (("paired", p_paired), ("repaired", 1 - p_paired), ("institution/a", 4000 / 6000),
                   ("institution/b", 2000 / 6000)):
        assert abs(mean[key] - p) < 4 * (p * (1 - p) / n) ** 0.5 + 1e-9, (key, mean[key], p)


def test_custom_split_text_only_and_image_only_rows():
    a, c, d = fake("a", 600), fake("c", 300, image=False), fake("d", 200, text=False)
    cfg = DataConfig(scenario="custom", paired_percent=50, sources=[
        SourceSpec("a", "x", rest="split"), SourceSpec("c", "y", role="text_only"),
        SourceSpec("d", "z", role="image_only")])
    out, _ = run(cfg, mixed(a, c, d))
    kinds = Counter((t.kind, (t.image or t.text).source) for t in out)
    n_pair = expected_paired(a, 50)
    assert kinds[("paired", "a")] == n_pair
    assert kinds[("image_only", "a")] == kinds[("text_only", "a")] == 600 - n_pair
    assert kinds[("text_only", "c")] == 300 and kinds[("image_only", "d")] == 200


def test_custom_image_source_paired_with_a_text_only_source():
    c, d = fake("c", 400, image=False), fake("d", 400, text=False)
    cfg = DataConfig(scenario="custom", sources=[
        SourceSpec("c", "y", role="text_only"), SourceSpec("d", "z", role="image_only", pair_with="c")])
    out, _ = run(cfg, mixed(c, d))
    assert len(out) == 400 and all(t.kind == "repaired" and t.text.source == "c" for t in out)


def test_coupling_differs_between_epochs_and_repeats_with_the_seed():
    recs = fake("a", 500)
    cfg = DataConfig(sources=[SourceSpec("a", "x")], scenario="mixup1", paired_percent=0)
    pairs = [[(t.image.key, t.text.key) for t in run(cfg, recs, seed=s)[0]] for s in (1, 2, 1)]
    assert pairs[0] == pairs[2]
    assert set(pairs[0]) != set(pairs[1])


def test_tiny_pool_still_never_couples_the_same_study():
    recs = fake("a", 60, per_study=6)
    cfg = DataConfig(sources=[SourceSpec("a", "x")], scenario="mixup1", paired_percent=0)
    out, s = run(cfg, recs, image_pool=2, report_pool=3, shuffle=4)
    assert out and all(t.image.study != t.text.study for t in out)
    assert len(out) + s.counts["unpairable"] == 60


def test_negative_rate_repairs_a_share_of_true_pairs():
    recs = fake("a", 4000)
    cfg = DataConfig(sources=[SourceSpec("a", "x")], scenario="baseline", negative_rate=0.25)
    out, _ = run(cfg, recs)
    share = sum(t.kind == "repaired" for t in out) / len(out)
    assert abs(share - 0.25) < 4 * (0.25 * 0.75 / 4000) ** 0.5
    assert all(t.image.study != t.text.study for t in out if t.kind == "repaired")


@pytest.mark.parametrize("scenario,roles", [("baseline", ["paired", "image_only"]),
                                            ("mixup1", ["paired", "paired"]),
                                            ("mixup2", ["paired"]), ("custom", ["paired"])])
def test_scenario_errors(scenario, roles):
    cfg = DataConfig(scenario=scenario,
                     sources=[SourceSpec(f"s{i}", "x", role=r) for i, r in enumerate(roles)])
    if scenario == "custom":
        cfg.sources[0].pair_with = "nope"
    with pytest.raises(ConfigError):
        cfg.validate()
