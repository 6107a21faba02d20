"""Synthetic chest X-ray institutions: images and reports that agree (docs/synthetic.md).

    institutions.py  presets (role, population, acquisition, report style) and the latent-cause
                     model of how findings co-occur
    canvas.py        body-unit coordinates and drawing helpers
    anatomy.py       the normal chest
    findings.py      the 13 drawn findings: parameters and image signatures
    acquisition.py   attenuation -> 8-bit film (exposure, contrast, gamma, noise, marker)
    reports.py       labels read from the report, and the report text
    record.py        one record end to end, deterministic per (preset, institution, seed, index)

The shard source is `mixvlp_ds.shard.sources.synthetic.SyntheticSource`.
"""

from mixvlp_ds.shard.synth.record import make_record, render_image, sample_study

__all__ = ["make_record", "render_image", "sample_study"]
