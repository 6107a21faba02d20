from mixvlp_ds.data.subset import in_paired_subset

PATIENTS = [f"p{i}" for i in range(20000)]


def test_share_matches_percent_and_is_deterministic():
    for percent in (1, 10, 50):
        chosen = [p for p in PATIENTS if in_paired_subset(p, percent, seed=3)]
        share = len(chosen) / len(PATIENTS)
        sd = (percent / 100 * (1 - percent / 100) / len(PATIENTS)) ** 0.5
        assert abs(share - percent / 100) < 4 * sd
        assert chosen == [p for p in PATIENTS if in_paired_subset(p, percent, seed=3)]


def test_subsets_are_nested_and_seed_dependent():
    small = {p for p in PATIENTS if in_paired_subset(p, 5, seed=0)}
    large = {p for p in PATIENTS if in_paired_subset(p, 30, seed=0)}
    other = {p for p in PATIENTS if in_paired_subset(p, 5, seed=1)}
    assert small < large
    assert small != other


def test_edges():
    assert all(in_paired_subset(p, 100, 0) for p in PATIENTS[:100])
    assert not any(in_paired_subset(p, 0, 0) for p in PATIENTS[:100])
    try:
        in_paired_subset("x", 101, 0)
    except ValueError:
        pass
    else:
        raise AssertionError("percent 101 accepted")
