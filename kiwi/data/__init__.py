"""Data: document sources, packed 32k-token streams with document boundaries, and the datamodule.

Sources and their checks need no torch; ``PackedDataset`` loads its module (and torch) on first use.
"""

from kiwi.data.sources import DataError, FileSource, HubSource, TextListSource


def __getattr__(name: str):
    if name == "PackedDataset":
        from kiwi.data.packed_dataset import PackedDataset

        return PackedDataset
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["DataError", "FileSource", "HubSource", "PackedDataset", "TextListSource"]
