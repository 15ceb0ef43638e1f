"""The user ids of a file: kept for the checks across files, checked unique as blocks go by
(``FileReader``'s part)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from streamflow.data.contracts import USERS
from streamflow.data.id_hashes import HashSet, has_duplicates, hash64
from streamflow.data.violations import MAX_EXAMPLES, Violation, example


class UserIds:
    """Mixed into ``FileReader`` (whose ``__init__`` sets the state): its user ids."""

    def _remember_ids(self, uid: pa.Array, first_line: int, lines: np.ndarray | None) -> None:
        """Keep the block's user ids (for the checks across files) and check they are unique so far.

        A block with a user id seen before is never yielded: COPY never receives a duplicate key.
        """
        offset = self._id_count
        self._ids.append(uid)
        self._lines.append((first_line, lines, len(uid)))
        self._id_count += len(uid)
        if self._duplicates or not len(uid):
            return
        if self._follows_users is None:  # decided on the first block: is users.csv read and clean?
            users = next((f for f in self._month.files if f.contract is USERS), None)
            self._follows_users = users is not None and users is not self and users._ids_usable()
        if self._follows_users:
            # The usual export lists every file's users in users.csv's order: comparing with those
            # (unique) ids is a memcmp, and makes hashing this file unnecessary.
            ref = self._month.file(USERS.table)._id_array()
            if offset + len(uid) <= len(ref) and uid.equals(ref.slice(offset, len(uid))):
                return
            self._follows_users = False
            if offset:
                self._hashes.add(hash64(pa.concat_arrays(self._ids[:-1])))  # unique: no hit
        present = uid if not uid.null_count else pc.drop_null(uid)
        if self._hashes.add(hash64(present)) and has_duplicates(self._ids):
            self._duplicates = True  # the exact report is made from all ids at the end

    def _file_done(self) -> None:
        self._hashes = HashSet()
        if self._duplicates and self._dup_violation is None and self._ids:
            self._dup_violation = self._duplicate_violation()
        if not self._ids_usable():
            self._ids, self._lines = [], []
            return
        month = self._month
        users = next((f for f in month.files if f.contract is USERS), None)
        if users is None or not users._ids_usable():
            return
        # Files listing users.csv's users in its order (the usual export) drop their own copy.
        others = [f for f in month.files if f is not users] if self is users else [self]
        for f in others:
            if not f._ids or not f._ids_usable() or f._aligned_with is not None:
                continue
            if f._id_array().equals(users._id_array()):
                f._aligned_with = users
                f._ids, f._lines = [], []

    def _ids_usable(self) -> bool:
        """Read to the end with every row's user id kept, present, well-formed and unique.

        Only then do the checks across files say something new (a file with a bad signup_date can
        still lack labels; one with a blank user id would only repeat that problem).
        """
        if not self._complete or self._duplicates or self._malformed_count or self._ids_gap or not self.rows:
            return False
        return not any(t.column == "user_id" for t in self._tallies.values())

    def _id_array(self) -> pa.Array:
        if self._aligned_with is not None:
            return self._aligned_with._id_array()
        if len(self._ids) > 1:
            self._ids = [pa.concat_arrays(self._ids)]
            self._lines = [(0, self._id_lines(), len(self._ids[0]))]
        return self._ids[0] if self._ids else pa.array([], pa.string())

    def _id_lines(self) -> np.ndarray:
        if self._aligned_with is not None:
            return self._aligned_with._id_lines()
        parts = [
            lines if lines is not None else first + np.arange(n, dtype=np.int64)
            for first, lines, n in self._lines
        ]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)

    def _duplicate_violation(self) -> Violation:
        ids = pa.concat_arrays(self._ids)
        counts = pc.value_counts(pc.drop_null(ids))
        repeated = counts.field("values").filter(pc.greater(counts.field("counts"), 1))
        mask = pc.fill_null(pc.is_in(ids, value_set=repeated), False)
        where = pc.indices_nonzero(mask)
        lines = self._id_lines()
        shown = where.slice(0, MAX_EXAMPLES).to_pylist()
        values = ids.take(pa.array(shown, pa.int64())).to_pylist()
        examples = tuple(example(int(lines[w]), v, v) for w, v in zip(shown, values, strict=True))
        return Violation(self.contract.filename, "must be unique", "user_id", len(where), examples)
