"""``eanet data download`` and ``eanet data check``."""

from __future__ import annotations

import click

from eanet.cli import summary

DATASET_CHOICE = click.Choice(["cifar100", "cifar10"])
data_dir_option = click.option(
    "--data-dir",
    type=click.Path(file_okay=True, dir_okay=True),
    default=None,
    help="data folder (default: $EANET_DATA_DIR, else ~/.cache/eanet/data)",
)


@click.group("data", short_help=summary("data"))
def data_group():
    """Download and verify datasets."""


@data_group.command("download", short_help="fetch, verify and extract a dataset")
@click.option("--dataset", type=DATASET_CHOICE, default="cifar100", show_default=True)
@data_dir_option
@click.option("--keep-archive", is_flag=True, help="keep the downloaded .tar.gz next to the extracted folder")
@click.option("--force", is_flag=True, help="download again and replace what is there")
@click.option("--progress/--no-progress", default=True, show_default=True)
def download_cmd(dataset, data_dir, keep_archive, force, progress):
    """Download the official archive, verify it, extract it safely and verify every file."""
    from eanet.data.cifar import SPECS, fetch, locate, verify
    from eanet.data.sources import resolve_data_dir

    spec = SPECS[dataset]
    base = resolve_data_dir(data_dir)
    source = None if force else locate(spec, base)
    if source is not None:
        verify(spec, source)
        click.echo(f"{spec.title} already present and verified: {source}")
        return
    click.echo(f"downloading {spec.title} from {spec.url} to {base}")
    from eanet.cli.progress import bars

    source = fetch(spec, base, progress=bars if progress else None, keep_archive=keep_archive, replace=force)
    click.echo(f"{spec.title} downloaded, extracted and verified: {source.path}")


@data_group.command("check", short_help="verify the data that is there")
@click.option(
    "--dataset", type=click.Choice(["cifar100", "cifar10", "imagefolder"]), default="cifar100", show_default=True
)
@data_dir_option
def check_cmd(dataset, data_dir):
    """Verify the data that is there (checksums, contents) and print the counts; downloads nothing."""
    from eanet.data.sources import resolve_data_dir

    if dataset == "imagefolder":
        from eanet.data.imagefolder import load_imagefolder

        root = resolve_data_dir(data_dir)
        decoded = load_imagefolder(root, progress=False, use_cache=False)
        click.echo(f"imagefolder: {root}, every image decoded")
    else:
        from eanet.data.cifar import decode, find_or_fetch, verify

        spec, source = find_or_fetch(dataset, data_dir=data_dir, download=False)
        verify(spec, source)
        decoded = decode(spec, source)
        click.echo(f"{spec.title}: {source}, md5 verified ({', '.join(spec.members)})")
    num_classes = len(decoded.classes)
    for split, images in (("train", decoded.train), ("test", decoded.test)):
        counts = images.class_counts(num_classes)
        per_class = (
            str(int(counts.min())) if counts.min() == counts.max() else f"{int(counts.min())}-{int(counts.max())}"
        )
        shape = "x".join(str(s) for s in images.images.shape[1:])
        click.echo(f"  {split}: {len(images):,} images ({shape}), {num_classes} classes, {per_class} per class")
    if decoded.coarse_classes:
        click.echo(f"  coarse classes: {len(decoded.coarse_classes)}")
