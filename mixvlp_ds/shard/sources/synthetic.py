"""`--source synthetic`: the embedded default data set (no files needed).

Draws chest-radiograph-like images with reports that agree, from three institution presets
(docs/synthetic.md): `mimic-like` (paired images and reports, the pre-training institution),
`nih-like` (images only) and `openi-like` (paired, mostly test: the evaluation institution).
"""

from __future__ import annotations

import argparse
import functools
from collections.abc import Iterator

from mixvlp_ds.shard.format import make_key
from mixvlp_ds.shard.source import RejectLog, SourceItem
from mixvlp_ds.shard.synth.institutions import PRESETS, get_preset
from mixvlp_ds.shard.synth.record import make_record, render_image, sample_study, study_meta

__all__ = ["HELP", "SyntheticSource", "add_arguments", "build", "make_record", "study_meta"]

HELP = (
    "synthetic chest X-rays with agreeing reports and CheXpert-14 labels, from simulated "
    "institutions (--preset mimic-like | nih-like (image-only) | openi-like (test)); needs no data"
)


class SyntheticSource:
    """A `Source` of `num` synthetic records of one institution.

    Records are independent of each other and of the order they are drawn in: record i depends
    only on (preset, institution, seed, i). `image_fn` is a picklable partial of `render_image`,
    so pixels are drawn in the shard writer's worker processes.
    """

    label_space = "chexpert14"

    def __init__(
        self,
        preset: str = "mimic-like",
        num: int = 200,
        seed: int = 0,
        institution: str | None = None,
        splits: tuple[float, float, float] | None = None,
        conspicuity: float = 1.0,
    ):
        self.preset = get_preset(preset)
        if num < 0:
            raise ValueError(f"--num must be >= 0, got {num}")
        if seed < 0:
            raise ValueError(f"--seed must be >= 0 for the synthetic source, got {seed}")
        if splits is not None:
            if len(splits) != 3 or min(splits) < 0 or abs(sum(splits) - 1.0) > 1e-6:
                raise ValueError(
                    f"split shares must be three non-negative numbers summing to 1, got {splits}"
                )
            splits = tuple(float(s) for s in splits)
        if not conspicuity >= 0:
            raise ValueError(f"--conspicuity must be >= 0, got {conspicuity}")
        self.num, self.seed, self.splits, self.conspicuity = num, seed, splits, float(conspicuity)
        self.institution = institution or self.preset.institution
        self.name = f"synthetic:{self.preset.name}:{self.institution}"

    def items(self, rejects: RejectLog) -> Iterator[SourceItem]:
        for i in range(self.num):
            study = sample_study(self.preset.name, i, self.seed, self.institution)
            meta = study_meta(study, self.splits)
            meta["source_file"] = f"synthetic://{self.preset.name}/{self.institution}/{self.seed}/{i}"
            yield SourceItem(
                key=make_key(self.institution, study.study_id, study.view),
                meta=meta,
                text=study.text,
                labels=dict(study.labels),
                image_fn=functools.partial(render_image, self.preset.name, i, self.seed, self.institution,
                                           self.conspicuity),
            )


def _shares(text: str) -> tuple[float, float, float]:
    try:
        parts = tuple(float(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected three comma-separated numbers like 0.8,0.1,0.1, got {text!r}"
        ) from None
    if len(parts) != 3 or min(parts) < 0 or abs(sum(parts) - 1.0) > 1e-6:
        raise argparse.ArgumentTypeError(
            f"split shares must be three non-negative numbers summing to 1, got {text!r}"
        )
    return parts  # type: ignore[return-value]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    roles = "; ".join(
        f"{p.name}: {'paired' if p.paired else 'image-only'}, default institution "
        f"{p.institution!r}, splits {p.splits}"
        for p in PRESETS.values()
    )
    group = parser.add_argument_group("synthetic source")
    group.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default="mimic-like",
        help=f"institution preset (acquisition, population, report style). {roles}",
    )
    group.add_argument(
        "--num", type=int, default=200, help="number of records (images) to draw (default 200)"
    )
    group.add_argument(
        "--conspicuity",
        type=float,
        default=1.0,
        help="scale every finding's drawn signature by this factor (default 1: as subtle as "
        "findings.py draws them; the README's main job uses 3, docs/synthetic.md)",
    )
    group.add_argument(
        "--split-shares",
        type=_shares,
        default=None,
        metavar="TRAIN,VAL,TEST",
        help="train/val/test shares by patient, e.g. 0.8,0.1,0.1 (default: the preset's)",
    )


def build(args: argparse.Namespace) -> SyntheticSource:
    return SyntheticSource(
        preset=args.preset,
        num=args.num,
        seed=getattr(args, "seed", 0) or 0,
        institution=getattr(args, "institution", None),
        splits=args.split_shares,
        conspicuity=args.conspicuity,
    )
