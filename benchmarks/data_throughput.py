"""Print decoded + augmented images/s (two strong views) for the synthetic, image-folder and Parquet sources.

The image folder and Parquet shards are generated in a temporary directory from synthetic images.
Usage: ``python benchmarks/data_throughput.py [--num-images 2000] [--image-size 32] [--num-workers 2]``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from torch.utils.data import Dataset

from pipeline.config import DataConfig
from pipeline.data.files import ImageFolder
from pipeline.data.loader import build_loader
from pipeline.data.parquet import ParquetShards, write_shards
from pipeline.data.synthetic import SyntheticShapes
from pipeline.data.views import build_views
from pipeline.methods.augmentations import MOCO_V2


def parse_args() -> argparse.Namespace:
    """Return the parsed command-line arguments."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-images", type=int, default=2000)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs after one warm-up epoch")
    return parser.parse_args()


def write_image_folder(source: SyntheticShapes, root: Path) -> None:
    """Write every image of ``source`` as a PNG file under ``root/<class>/``."""
    for index in range(len(source)):
        folder = root / f"class_{source.labels[index]:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        source.load_image(index).save(folder / f"{index:06d}.png")


def images_per_second(source: Dataset, args: argparse.Namespace) -> float:
    """Return the images/s of full epochs through the epoch loader, after a warm-up epoch starts the workers."""
    loader = build_loader(
        source,
        args.batch_size,
        rank=0,
        world_size=1,
        shuffle=True,
        drop_last=False,
        seed=0,
        num_workers=args.num_workers,
    )
    loader.set_epoch(0)
    for _ in loader:
        continue
    images, started = 0, time.perf_counter()
    for epoch in range(1, args.epochs + 1):
        loader.set_epoch(epoch)
        for _, labels, _ in loader:
            images += labels.shape[0]
    return images / (time.perf_counter() - started)


def main() -> None:
    """Generate the data, then print one images/s line per source."""
    args = parse_args()
    data_cfg = DataConfig(image_size=args.image_size)
    views = build_views({"query": MOCO_V2, "key": MOCO_V2}, data_cfg)
    synthetic = SyntheticShapes(args.num_images, args.image_size, 4, 5, seed=0, split_offset=0)
    print(
        f"{args.num_images} images of {args.image_size} px, two strong views, batch {args.batch_size}, "
        f"{args.num_workers} loader workers"
    )
    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        write_image_folder(synthetic, Path(folder) / "images")
        write_shards(synthetic, Path(folder) / "shards", 1000, 250, seed=0, image_format="png")
        print(f"generated the image folder and Parquet shards in {time.perf_counter() - started:.1f} s")
        sources = {
            "synthetic (rendered)": SyntheticShapes(args.num_images, args.image_size, 4, 5, 0, 0, transform=views),
            "image folder (PNG)": ImageFolder(Path(folder) / "images", transform=views),
            "parquet shards (PNG)": ParquetShards(Path(folder) / "shards", transform=views),
        }
        for name, source in sources.items():
            print(f"{name:24s} {images_per_second(source, args):8.0f} images/s")


if __name__ == "__main__":
    main()
