"""`python -m mixvlp_ds.shard` / `mixvlp-shard`: convert a dataset into image-pyramid shards.

    python -m mixvlp_ds.shard --source synthetic --out shards/demo
    python -m mixvlp_ds.shard --source nih --help        # the nih source's own options
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import textwrap
from pathlib import Path

from mixvlp_ds.shard.format import DEFAULT_IMAGE_SIZE
from mixvlp_ds.shard.pipeline import NothingWrittenError, ShardOptions, write_dataset
from mixvlp_ds.shard.source import InputLayoutError
from mixvlp_ds.shard.sources import SOURCES, load_source_module

PROG = "python -m mixvlp_ds.shard"
COMMON = ("source", "out", "image_size", "format", "workers", "shard_max_samples", "shard_max_bytes",
          "institution", "seed", "no_progress")

DESCRIPTION = """\
Convert a chest X-ray dataset into shards of 3-level 8-bit grayscale PNG pyramids (S, S/2, S/4)
with the report text, labels and metadata (WebDataset tar, or MDS for mosaicml streaming).
Each output folder gets index.json (written last) and rejects.jsonl (every skipped input and why).
Re-running the same command writes byte-identical shards; the sample format is in docs/shard_format.md.
"""


def parse_bytes(text: str) -> int:
    """'268435456', '256M', '256MiB', '1G' -> bytes (binary units)."""
    m = re.fullmatch(r"\s*(\d+)\s*([KMGT]?)(i?B)?\s*", str(text), re.IGNORECASE)
    if not m:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a byte count like 268435456, 256M or 1GiB")
    return int(m.group(1)) * 1024 ** " KMGT".index((m.group(2) or " ").upper())


def _sources_epilog() -> str:
    lines = ["sources (see `--source NAME --help` for each source's own options):"]
    for name in SOURCES:
        try:
            text = load_source_module(name).HELP
        except Exception as e:  # a broken or missing source must not break --help for the others
            text = f"(unavailable: {type(e).__name__}: {e})"
        lines.append(textwrap.fill(text, 100, initial_indent=f"  {name:<11}", subsequent_indent=" " * 13))
    return "\n".join(lines)


def build_parser(source: str | None = None) -> argparse.ArgumentParser:
    """The full parser; with `source`, that source's option group is added (and shown by --help)."""
    p = argparse.ArgumentParser(prog=PROG, description=DESCRIPTION, epilog=_sources_epilog(),
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                conflict_handler="resolve")
    g = p.add_argument_group("common options")
    g.add_argument("--source", required=True, choices=list(SOURCES), help="which dataset reader to use")
    g.add_argument("--out", help="output folder (default: shards/<institution>)")
    g.add_argument("--image-size", type=int, default=DEFAULT_IMAGE_SIZE,
                   help="finest pyramid level S, divisible by 4; levels S, S/2, S/4 "
                        f"(default {DEFAULT_IMAGE_SIZE})")
    g.add_argument("--format", choices=("wds", "mds"), default="wds",
                   help="wds: WebDataset tar shards <split>-NNNNNN.tar; mds: mosaicml streaming, "
                        "one <split>/ folder each (default wds)")
    g.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                   help="decoding processes; output is identical for any value (default: all cores)")
    g.add_argument("--shard-max-samples", type=int, default=ShardOptions.shard_max_samples,
                   help=f"samples per shard at most (default {ShardOptions.shard_max_samples})")
    g.add_argument("--shard-max-bytes", type=parse_bytes, default=ShardOptions.shard_max_bytes,
                   help="bytes per shard at most, e.g. 256M, 1GiB (default 256MiB)")
    g.add_argument("--institution", help="institution name stored in meta.json and keys "
                                         "(default: the source's own, e.g. nih)")
    g.add_argument("--seed", type=int, default=0,
                   help="seed of the synthetic source; recorded in index.json (hash splits of real "
                        "sources are by patient id alone, so a patient keeps its split whatever the seed)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    if source is not None:
        load_source_module(source).add_arguments(p)
    return p


def print_summary(summary: dict, console=None) -> None:
    """A rich table: per split samples / images / texts / shards / bytes, then rejects and notes."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    t = Table(title=f"{summary['source']} -> {summary['out_dir']} ({summary['format']}, "
                    f"institution {summary['institution']})")
    for col in ("split", "samples", "images", "texts", "shards", "MiB"):
        t.add_column(col, justify="left" if col == "split" else "right")
    for split, s in summary["splits"].items():
        t.add_row(split, str(s["samples"]), str(s["images"]), str(s["texts"]), str(s["shards"]),
                  f"{s['bytes'] / 2**20:.2f}")
    console.print(t)
    if summary["rejects_total"]:
        r = Table(title=f"rejects: {summary['rejects_total']} (details in {summary['rejects_file']})")
        r.add_column("reason")
        r.add_column("count", justify="right")
        for reason, n in summary["rejects"].items():
            r.add_row(reason, str(n))
        console.print(r)
    else:
        console.print("rejects: none")
    for what, n in summary["notes"].items():
        console.print(f"note: {what}: {n}")
    console.print(f"index: {summary['index']}")


def main(argv: list[str] | None = None) -> int:
    argv = [str(a) for a in (sys.argv[1:] if argv is None else argv)]
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--source")
    known, _ = pre.parse_known_args(argv)
    parser = build_parser(known.source if known.source in SOURCES else None)
    args = parser.parse_args(argv)
    source_args = {k: v for k, v in sorted(vars(args).items()) if k not in COMMON}
    try:
        source = load_source_module(args.source).build(args)
        institution = args.institution or getattr(source, "institution", None) or args.source
        out = Path(args.out) if args.out else Path("shards") / institution
        opts = ShardOptions(image_size=args.image_size, format=args.format, workers=max(1, args.workers),
                            shard_max_samples=args.shard_max_samples, shard_max_bytes=args.shard_max_bytes,
                            progress=not args.no_progress and sys.stderr.isatty(),
                            institution=args.institution, seed=args.seed,
                            source_args={"source": args.source, **source_args})
        opts.validate()
    except InputLayoutError as e:
        print(f"error: input layout not recognised: {e}", file=sys.stderr)
        return 2
    except ValueError as e:  # bad option values (image size, limits, fractions)
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        summary = write_dataset(source, out, opts)
    except InputLayoutError as e:  # sources may find a layout problem only while listing
        print(f"error: input layout not recognised: {e}", file=sys.stderr)
        return 2
    except NothingWrittenError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print_summary(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
