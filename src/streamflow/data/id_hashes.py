"""Uniqueness of user ids in a file read block by block: 64-bit hashes, confirmed on the ids themselves."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

_MIX = np.array(
    [
        0x9E3779B97F4A7C15,
        0xC2B2AE3D27D4EB4F,
        0x165667B19E3779F9,
        0xD6E8FEB86659FD93,
        0xFF51AFD7ED558CCD,
        0xC4CEB9FE1A85EC53,
        0x27D4EB2F165667C5,
        0x94D049BB133111EB,
    ],
    dtype=np.uint64,
)


def hash64(values: pa.Array) -> np.ndarray:
    """A 64-bit hash of each (non-null) string, vectorised: its length and first 64 bytes, mixed.

    Equal strings hash equal; a shared hash is only a suspicion, confirmed on the strings themselves.
    """
    n = len(values)
    if not n:
        return np.zeros(0, dtype=np.uint64)
    _, offsets_buf, data_buf = values.buffers()
    offsets = np.frombuffer(offsets_buf, dtype=np.int32, count=n + 1, offset=values.offset * 4)
    offsets = offsets.astype(np.int64)
    data = np.frombuffer(data_buf, dtype=np.uint8) if data_buf is not None else np.zeros(1, np.uint8)
    lengths = np.diff(offsets)
    longest = int(lengths.max())
    width = max(8, -(-min(longest, 64) // 8) * 8)
    if int(lengths.min()) == longest <= 64:  # fixed-width ids (the usual case): one reshape
        matrix = np.zeros((n, width), dtype=np.uint8)
        matrix[:, :longest] = data[offsets[0] : offsets[0] + n * longest].reshape(n, longest)
    else:
        spots = np.arange(width)
        index = np.minimum(offsets[:-1, None] + spots, max(len(data) - 1, 0))
        matrix = data[index] if len(data) else np.zeros((n, width), dtype=np.uint8)
        matrix[spots >= lengths[:, None]] = 0
    words = matrix.view(np.uint64)
    with np.errstate(over="ignore"):
        h = lengths.astype(np.uint64) * _MIX[0]
        for j in range(words.shape[1]):
            h ^= words[:, j]
            h *= _MIX[(j + 1) % len(_MIX)]
            h ^= h >> np.uint64(29)
        h ^= h >> np.uint64(32)
        h *= _MIX[4]
        h ^= h >> np.uint64(33)
    return h


class HashSet:
    """Sorted runs of 64-bit hashes, merged as they grow (a tiny LSM tree)."""

    def __init__(self) -> None:
        self._runs: list[np.ndarray] = []

    def add(self, hashes: np.ndarray) -> bool:
        """Add; True if some hash repeats within ``hashes`` or was added before."""
        run = np.sort(hashes)
        hit = bool(len(run) > 1 and (run[1:] == run[:-1]).any())
        for old in self._runs:
            if hit:
                break
            at = np.minimum(np.searchsorted(old, run), len(old) - 1)
            hit = bool((old[at] == run).any())
        self._runs.append(run)
        while len(self._runs) > 1 and len(self._runs[-2]) <= 2 * len(self._runs[-1]):
            b, a = self._runs.pop(), self._runs.pop()
            self._runs.append(np.sort(np.concatenate([a, b]), kind="stable"))
        return hit


def has_duplicates(chunks: list[pa.Array]) -> bool:
    """The exact check behind a hash hit."""
    ids = pc.drop_null(pa.concat_arrays(chunks))
    return len(pc.unique(ids)) < len(ids)
