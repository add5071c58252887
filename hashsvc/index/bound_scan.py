"""Whether any of a few thousand 256-bit hashes lies within a radius of each
of many views, faster than comparing every pair (hashsvc/index/flat_scan.py)
and with the same answers: a retro-hunt's question (hashsvc/core/retro_scan.py).

How. The hashes are sorted and cut into groups of a few (`group_size`). For
each group, each of the 32 byte positions and each of the 256 values a byte
can take, a table holds the fewest bits in which that value differs from the
byte of any hash of the group. A view's distance to each hash of the group is
then at least the sum, over its 32 bytes, of the table values its bytes pick:
a lower bound read with 32 byte-vector additions for 64 groups at once, where
comparing with the 64 groups' hashes costs a popcount per word and pair. Only
the groups whose bound is within the radius are compared hash by hash, so the
answers are those of the full comparison.

Why not the multi-index over the new hashes (16 chunks of 16 bits, probe each
chunk's neighbours). It is exact only by the pigeonhole (some chunk within
floor(r / 16) bits) and at a retro-hunt's usual radius, PDQ's review distance
of 56 bits, that is 3 bits a chunk: 16 x 697 probes a view, more than the
10,000 hashes it would save comparing. At 31 bits (17 probes a chunk) it
should win, but measured (bench/retro_scan.py, 10,000 hashes, compiled,
probing 17 buckets a chunk) it ran at 0.4x the flat scan, this scan at 3.9x:
272 random reads of 16 tables of 65,536 buckets cost more than 32 rows added.

Why block by block over all of a call's views. A block's tables (64 groups,
512 KB) stay in the core's cache while every view reads them; going through
the views in tiles of 1,000-4,000 instead (the tables read again per tile)
measured 2-4x slower. So the larger a step (retro_batch_records), the better.

Why bytes and groups of 4-16. A random view's bound to a random group of 6
sorted hashes is ~74 +- 5 bits; below 57 for 1 group in 2,000 (the first byte
is nearly shared by neighbours in sorted order, so tighter there). Larger
groups mean fewer tables to add but weaker bounds (8: 1 group in 70 passes
at 56 bits). The group size is picked by the radius (group_size_for).
Values are capped at 7 so the 32-byte sum fits a byte (a smaller value is
still a lower bound).
"""

from __future__ import annotations

from concurrent.futures import Executor

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from hashsvc.index.binary import hash_matrix
from hashsvc.index.flat_scan import FlatScan
from hashsvc.index.mih_scan import _popcount

BITS = 256
BYTES = BITS // 8
WORDS = BITS // 64
# Groups whose bounds one pass adds at once: a 512-bit vector of bytes.
LANES = 64
# A table value's cap: 32 of them sum to at most 224, within a byte.
_CAP = 7
# Above this radius the bounds (capped) prune nothing: compare every pair.
MAX_BOUND_RADIUS = 127

_POPCOUNT_BYTE = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


# Fewer new hashes than this are compared with every view (one block of
# bounds costs about what comparing ~200 hashes does).
MIN_BOUND_HASHES = 256
# Above this radius the bounds prune too little: every pair is compared.
MAX_GROUPED_RADIUS = 64


def group_size_for(max_distance: int) -> int:
    """Hashes per group: as large as keeps the bounds selective at this
    radius. Measured with 10,000 random hashes against 36,000 random views
    (bench/retro_scan.py): at 31 and 40 bits groups of 16 (3.3-3.9x the flat
    scan), at 48 and 56 groups of 6 (2.1-2.2x; 8: 1.0-2.1x), at 64 groups of
    4 (1.2x; 6: 0.5x). The bound of a group of 16 is ~51 +- 4 bits, of 6
    ~74 +- 5, of 4 ~84 +- 6."""
    if max_distance <= 40:
        return 16
    if max_distance <= 56:
        return 6
    return 4


def any_within_scan(hashes: np.ndarray, max_distance: int) -> FlatScan | BoundScan:
    """The faster exact scan of these hashes at this radius: bounds over
    groups, or every pair when the hashes are few or the radius wide."""
    if len(hashes) < MIN_BOUND_HASHES or max_distance > MAX_GROUPED_RADIUS:
        return FlatScan(hashes)
    return BoundScan(hashes, group_size_for(max_distance))


class BoundScan:
    """A fixed set of 256-bit hashes, asked only whether any is within a
    distance of each of many views (the same question and answers as
    FlatScan.any_within)."""

    def __init__(self, hashes: np.ndarray, group_size: int = 6) -> None:
        if not 1 <= group_size <= LANES:
            raise ValueError(f"group_size must be within 1..{LANES}")
        matrix = hash_matrix(hashes, len(hashes), BITS)
        self.count = len(matrix)
        self.group_size = group_size
        # neighbours in sorted order share leading bits: tighter bounds
        ordered = matrix[np.lexsort(matrix.T[::-1])] if self.count else matrix
        groups = -(-self.count // group_size)
        # the last group filled with its first hash again (a duplicate
        # changes no answer to "is any within")
        padded = np.empty((groups * group_size, BYTES), dtype=np.uint8)
        padded[: self.count] = ordered
        if groups:
            padded[self.count :] = ordered[(groups - 1) * group_size]
        self._groups = groups
        self._words = np.ascontiguousarray(padded).view("<u8").reshape(-1, WORDS)
        self._tables = _build_tables(padded, group_size, groups, _POPCOUNT_BYTE, _CAP)
        self._table_words = self._tables.view("<u8")

    def __len__(self) -> int:
        return self.count

    def any_within(
        self, views: np.ndarray, max_distance: int, pool: Executor | None = None, parts: int = 1
    ) -> np.ndarray:
        """For each view ((n, 32) uint8 rows), whether a hash is within
        max_distance bits. With a pool, in `parts` parts: all but the last
        on the pool's threads, the last on the caller's (the loop holds no
        GIL, so they run at once)."""
        matrix = np.ascontiguousarray(hash_matrix(views, len(views), BITS))
        if len(matrix) == 0 or self.count == 0 or max_distance < 0:
            return np.zeros(len(matrix), dtype=bool)
        words = matrix.view("<u8").reshape(-1, WORDS)
        if max_distance > MAX_BOUND_RADIUS:
            return _every_pair(words, self._words, min(max_distance, BITS))
        args = (self._table_words, self._words, self.group_size, self._groups, max_distance)
        if pool is None or parts < 2:
            return _scan(matrix, words, *args)
        bounds = [len(matrix) * k // parts for k in range(parts + 1)]
        futures = [
            pool.submit(_scan, matrix[a:b], words[a:b], *args)
            for a, b in zip(bounds[:-2], bounds[1:-1], strict=True)
        ]
        last = _scan(matrix[bounds[-2] :], words[bounds[-2] :], *args)
        return np.concatenate([f.result() for f in futures] + [last])


@numba.njit(nogil=True, cache=True)
def _build_tables(padded, group_size, groups, popcount_byte, cap):  # pragma: no cover - compiled
    """(blocks, 32, 256, LANES) uint8: for each group (block * LANES + lane),
    byte position and byte value, the fewest bits (at most cap) in which the
    value differs from that byte of any hash of the group."""
    blocks = -(-groups // LANES)
    tables = np.full((blocks, BYTES, 256, LANES), cap, dtype=np.uint8)
    for g in range(groups):
        block, lane = g // LANES, g % LANES
        for position in range(BYTES):
            for value in range(256):
                fewest = cap
                for m in range(g * group_size, (g + 1) * group_size):
                    d = popcount_byte[value ^ padded[m, position]]
                    if d < fewest:
                        fewest = d
                tables[block, position, value, lane] = fewest
    return tables


@numba.njit(nogil=True, cache=True, inline="always")
def _group_within(view, hash_words, first, count, radius):  # pragma: no cover - compiled
    for m in range(first, first + count):
        d = (
            _popcount(view[0] ^ hash_words[m, 0])
            + _popcount(view[1] ^ hash_words[m, 1])
            + _popcount(view[2] ^ hash_words[m, 2])
            + _popcount(view[3] ^ hash_words[m, 3])
        )
        if d <= radius:
            return True
    return False


# Each byte's high bit, and each byte's lowest bit, in every byte of a word.
_HIGH_BITS = 0x8080808080808080
_ONES = np.uint64(0x0101010101010101)
# A block's groups' bounds as words: 8 groups' bytes a word.
_BLOCK_WORDS = LANES // 8


@intrinsic
def _any_bound_within(typingctx, table, view, below, flags_out):
    """Whether any of a block's 64 groups' bounds for the view is within
    the radius (below: radius + 1 in every byte). The bound is the sum over
    the view's 32 bytes of the table rows they pick, each row 64 bytes (one
    512-bit vector): 32 vector loads and additions, written out here because
    the compiler, left to itself, turns the loop over bytes into gathers
    (5x slower). Sums of values capped at 7 never carry into the next byte;
    a byte b < radius + 1 <= 128 borrows into its high bit in b - below,
    where ~b keeps it (the usual test for a byte below n)."""
    if not (
        isinstance(table, types.Array)
        and table.ndim == 3
        and table.layout == "C"
        and table.dtype == types.uint64
        and isinstance(view, types.Array)
        and view.ndim == 1
        and view.layout == "C"
        and view.dtype == types.uint8
        and isinstance(flags_out, types.Array)
        and flags_out.layout == "C"
        and flags_out.dtype == types.uint64
    ):
        return None
    sig = types.boolean(table, view, types.uint64, flags_out)

    def codegen(context, builder, signature, args):
        table_struct = context.make_array(signature.args[0])(context, builder, args[0])
        view_struct = context.make_array(signature.args[1])(context, builder, args[1])
        i64 = ir.IntType(64)
        vector = ir.VectorType(i64, _BLOCK_WORDS)
        rows = builder.bitcast(table_struct.data, vector.as_pointer())
        view_bytes = view_struct.data
        sums = []
        for position in range(BYTES):
            value = builder.load(builder.gep(view_bytes, [i64(position)]))
            row = builder.add(i64(position * 256), builder.zext(value, i64))
            sums.append(builder.load(builder.gep(rows, [row]), align=8))
        while len(sums) > 1:  # a tree of additions: short dependency chains
            sums = [builder.add(a, b) for a, b in zip(sums[::2], sums[1::2], strict=True)]
        bound = sums[0]
        below_vector = builder.insert_element(ir.Constant(vector, ir.Undefined), args[2], i64(0))
        below_vector = builder.shuffle_vector(
            below_vector, below_vector, ir.Constant(ir.VectorType(ir.IntType(32), _BLOCK_WORDS), 0)
        )
        high = ir.Constant(vector, [ir.Constant(i64, _HIGH_BITS)] * _BLOCK_WORDS)
        flags = builder.and_(
            builder.and_(builder.sub(bound, below_vector), builder.not_(bound)), high
        )
        flags_struct = context.make_array(signature.args[3])(context, builder, args[3])
        builder.store(flags, builder.bitcast(flags_struct.data, vector.as_pointer()), align=8)
        any_flag = builder.extract_element(flags, i64(0))
        for word in range(1, _BLOCK_WORDS):
            any_flag = builder.or_(any_flag, builder.extract_element(flags, i64(word)))
        return builder.icmp_unsigned("!=", any_flag, i64(0))

    return sig, codegen


@numba.njit(nogil=True, cache=True)
def _scan(views, view_words, tables, hash_words, group_size, groups, radius):  # pragma: no cover
    """tables: (blocks, 32, 256, LANES // 8) uint64, each word 8 groups'
    bytes."""
    n = views.shape[0]
    out = np.zeros(n, dtype=np.bool_)
    flags = np.empty(_BLOCK_WORDS, dtype=np.uint64)
    below = _ONES * np.uint64(radius + 1)
    for block in range(tables.shape[0]):
        table = tables[block]
        for v in range(n):
            if out[v] or not _any_bound_within(table, views[v], below, flags):
                continue
            # the groups that may be within: those whose byte is flagged (a
            # byte above a flagged one may be flagged too, by a borrow: only
            # compared in vain)
            for word in range(_BLOCK_WORDS):
                flagged = flags[word]
                k = 0
                while flagged and not out[v]:
                    if flagged & np.uint64(0x80):
                        g = block * LANES + word * 8 + k
                        if g < groups and _group_within(
                            view_words[v], hash_words, g * group_size, group_size, radius
                        ):
                            out[v] = True
                    flagged >>= np.uint64(8)
                    k += 1
    return out


@numba.njit(nogil=True, cache=True)
def _every_pair(view_words, hash_words, radius):  # pragma: no cover - compiled
    n = view_words.shape[0]
    out = np.zeros(n, dtype=np.bool_)
    for v in range(n):
        out[v] = _group_within(view_words[v], hash_words, 0, hash_words.shape[0], radius)
    return out
