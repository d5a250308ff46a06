"""How the store writes and reads parquet: with a CRC checksum on every page, verified on read.

A footer can be intact while a data page under it is not (a bad disk block, a flipped bit on a
network filesystem). Without checksums such a page decodes into different values without any
error, or fails deep in a decompressor naming no file. Every parquet file dd-assets writes
(row groups, final outputs, exports) carries page checksums; every read of the store's own files
verifies them (through store/files.py, which every reader uses), and `dd-assets check` reads
every page of a stage (`files.verify_pages`). Files written before checksums existed have none
to verify and read as before."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa

if TYPE_CHECKING:
    import pyarrow.dataset as pads
    import pyarrow.parquet as pq

# Rows per batch when a file is streamed (export, finalize, verification).
BATCH_ROWS = 65_536


# pyarrow.parquet is imported where it is used: with pyarrow.fs (which it loads) it costs ~0.05 s,
# and `dd-assets status` of a stage whose footer index stands for its folder reads no parquet.


def write_table(table: pa.Table, where: str | Path, row_group_size: int | None = None) -> None:
    import pyarrow.parquet as pq

    pq.write_table(table, where, row_group_size=row_group_size, write_page_checksum=True)


def writer(where: str | Path, schema: pa.Schema) -> pq.ParquetWriter:
    import pyarrow.parquet as pq

    return pq.ParquetWriter(str(where), schema, write_page_checksum=True)


def open_file(path: str | Path) -> pq.ParquetFile:
    import pyarrow.parquet as pq

    return pq.ParquetFile(path, page_checksum_verification=True)


def read_table(path: str | Path) -> pa.Table:
    import pyarrow.parquet as pq

    return pq.read_table(path, page_checksum_verification=True)


@functools.cache
def verifying_format() -> pads.ParquetFileFormat:
    # pyarrow.dataset costs ~0.1 s to import, and only readers of whole stages need it.
    import pyarrow.dataset as pads

    options = pads.ParquetFragmentScanOptions(page_checksum_verification=True)
    return pads.ParquetFileFormat(default_fragment_scan_options=options)
