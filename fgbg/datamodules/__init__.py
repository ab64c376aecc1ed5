"""Lightning datamodules: WebDataset clip shards -> batches of the training contract."""

from fgbg.datamodules.clips import ClipDataModule, ClipStream, ExampleBuilder, expand_shards

__all__ = ["ClipDataModule", "ClipStream", "ExampleBuilder", "expand_shards"]
