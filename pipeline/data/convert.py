"""Command line: convert the configured source's train and test splits to Parquet shards.

Usage: ``python -m pipeline.data.convert --config X [--set k=v] --out DIR [--rows-per-shard N]
[--row-group-size M] [--image-format png|jpeg]``. The full splits are written (no long-tail
subsampling: that is applied when the shards are read) to ``DIR/train`` and ``DIR/test``.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

from pipeline.config import add_config_arguments, config_from_args
from pipeline.data.build import build_source
from pipeline.data.errors import DataError
from pipeline.data.parquet import write_shards

PROGRESS_EVERY_S = 5.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Return the parsed command-line arguments."""
    parser = argparse.ArgumentParser(prog="python -m pipeline.data.convert", description=__doc__.splitlines()[0])
    add_config_arguments(parser)
    parser.add_argument("--out", required=True, help="output directory; splits go to OUT/train and OUT/test")
    parser.add_argument("--rows-per-shard", type=int, default=10000, help="rows per Parquet file")
    parser.add_argument("--row-group-size", type=int, default=500, help="rows per row group (the unit of sharding)")
    parser.add_argument("--image-format", choices=("png", "jpeg"), default="png", help="encoding of in-memory images")
    return parser.parse_args(argv)


def progress_printer(split: str, total: int) -> Callable[[int], None]:
    """Return a callback printing rows written and rows/s at most every few seconds, and at the end."""
    started = time.perf_counter()
    last_print = started

    def report(written: int) -> None:
        nonlocal last_print
        now = time.perf_counter()
        if now - last_print >= PROGRESS_EVERY_S or written == total:
            last_print = now
            rate = written / max(now - started, 1e-9)
            print(f"{split}: {written}/{total} rows, {rate:.0f} rows/s", flush=True)

    return report


def main(argv: list[str] | None = None) -> None:
    """Convert both splits; exit 1 with one line on a data error."""
    args = parse_args(argv)
    config = config_from_args(args)
    if config.data.source == "parquet":
        print("error: data.source is already parquet; configure the source to convert from", file=sys.stderr)
        raise SystemExit(2)
    data_cfg = config.data.model_copy(update={"long_tail_ratio": None})
    try:
        for split in ("train", "test"):
            source = build_source(data_cfg, split)
            print(f"{split}: converting {source.describe()}", flush=True)
            out = Path(args.out) / split
            manifest = write_shards(
                source,
                out,
                args.rows_per_shard,
                args.row_group_size,
                data_cfg.seed,
                args.image_format,
                progress=progress_printer(split, len(source)),
            )
            print(f"{split}: wrote {manifest['num_rows']} rows in {len(manifest['shards'])} shards to {out}")
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
