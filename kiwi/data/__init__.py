"""Data: document sources, packed 32k-token streams with document boundaries, and the datamodule."""

from kiwi.data.packed_dataset import PackedDataset
from kiwi.data.sources import DataError, FileSource, HubSource, TextListSource

__all__ = ["DataError", "FileSource", "HubSource", "PackedDataset", "TextListSource"]
