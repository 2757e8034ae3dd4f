"""The OOM drill's body: a chunked job whose memory grows with its chunk size (no prefect)."""

from __future__ import annotations

import hashlib


def checksum_rows(part: int, rows: int, rows_per_chunk: int, bytes_per_row: int = 1024) -> dict:
    """Build ``rows`` rows of ``bytes_per_row`` bytes, a chunk at a time, and checksum them.

    The checksum depends only on (part, rows), never on the chunk size, so a retry with a
    smaller chunk gives the same answer.
    """
    digest = hashlib.sha256()
    done = 0
    while done < rows:
        count = min(rows_per_chunk, rows - done)
        chunk = bytearray(count * bytes_per_row)  # the memory a chunk really holds
        chunk[0::bytes_per_row] = bytes(
            (part * 31 + row) % 251 for row in range(done, done + count)
        )
        digest.update(chunk)  # streaming: the digest does not depend on chunk boundaries
        done += count
    return {
        "part": part,
        "rows": rows,
        "rows_per_chunk": rows_per_chunk,
        "sha256": digest.hexdigest()[:16],
    }
