"""Whether any of a few thousand 256-bit hashes lies within a radius of each
of many views, faster than comparing every pair (hashsvc/index/flat_scan.py)
and with the same answers: a retro-hunt's question (hashsvc/core/retro_scan.py).

How. The hashes are sorted and cut into groups of a few (`group_size`). For
each group, each of the 32 byte positions and each of the 256 values a byte
can take, a table holds the fewest bits in which that value differs from the
byte of any hash of the group. A view's distance to each hash of the group is
then at least the sum, over its 32 bytes, of the table values its bytes pick:
a lower bound read with 32 loads of a 512-bit row and ~100 vector operations
for 128 groups at once (values of 4 bits, two groups a byte), where comparing
with the 128 groups' hashes costs a popcount per word and pair. Only the
groups whose bound is within the radius are compared hash by hash, so the
answers are those of the full comparison.

Why not the multi-index over the new hashes (16 chunks of 16 bits, probe each
chunk's neighbours). It is exact only by the pigeonhole (some chunk within
floor(r / 16) bits) and at a retro-hunt's usual radius, PDQ's review distance
of 56 bits, that is 3 bits a chunk: 16 x 697 probes a view, more than the
10,000 hashes it would save comparing. At 31 bits (17 probes a chunk) it
should win, but measured (bench/retro_scan.py, 10,000 hashes, compiled,
probing 17 buckets a chunk) it ran at 0.4-0.5x the flat scan, this scan at
8x: 272 random reads of 16 tables of 65,536 buckets cost more than 32 rows
added.

Why block by block over all of a call's views. A block's tables (128 groups,
512 KB) stay in the core's cache while every view reads them; going through
the views in tiles of 1,000-4,000 instead (the tables read again per tile)
measured 2-4x slower. So the larger a step (retro_batch_records), the better.
Reading the tables is what bounds the speed: bytes of one group each (64
groups a block) ran at 0.6x the 4-bit values.

Why bytes and groups of 4-16. A random view's bound to a random group of 6
sorted hashes is ~74 +- 5 bits; below 57 for 1 group in 2,000 (the first byte
is nearly shared by neighbours in sorted order, so tighter there). Larger
groups mean fewer tables to add but weaker bounds (8: 1 group in 70 passes
at 56 bits). The group size is picked by the radius (group_size_for).
Values are capped at 7 (a smaller value is still a lower bound): two rows'
4-bit values add without carry, and 32 sum to at most 224, within a byte.
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
# Groups whose bounds one pass adds at once: a 512-bit vector of 4-bit values.
BLOCK_GROUPS = 128
_ROW_BYTES = 64
# A table value's cap: 32 of them sum to at most 224, within a byte.
_CAP = 7
# Any bound is at most 224: beyond, compare every pair.
MAX_BOUND_RADIUS = BYTES * _CAP - 1

_POPCOUNT_BYTE = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


# Hashes a group may hold (more: bounds too weak to prune anything).
MAX_GROUP_SIZE = 64
# Fewer new hashes than this are compared with every view (a block of
# bounds costs about what comparing a few hundred hashes does).
MIN_BOUND_HASHES = 256
# Above this radius the bounds prune too little: every pair is compared.
MAX_GROUPED_RADIUS = 64


def group_size_for(max_distance: int) -> int:
    """Hashes per group: as large as keeps the bounds selective at this
    radius. Measured with 10,000 random hashes against 36,000 random views
    (bench/retro_scan.py; the flat scan ~640k views/s a core): at 31 bits
    groups of 16 (8.2x the flat scan; 6: 4.4x), at 40 and 48 groups of 8
    (6.2x, 5.9x; 16: 5.6x, 0.4x), at 56 groups of 6 (3.7x; 4: 3.1x, 8:
    1.3x), at 64 groups of 4 (3.2x; 6: 0.7x). The bound of a group of 16 is
    ~51 +- 4 bits, of 8 ~67 +- 5, of 6 ~74 +- 5, of 4 ~84 +- 6."""
    if max_distance <= 31:
        return 16
    if max_distance <= 48:
        return 8
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
        if not 1 <= group_size <= MAX_GROUP_SIZE:
            raise ValueError(f"group_size must be within 1..{MAX_GROUP_SIZE}")
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
        args = (self._tables, self._words, self.group_size, self._groups, max_distance)
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
def _build_tables(padded, group_size, groups, popcount_byte, cap):  # pragma: no cover
    """(blocks, 32, 256, 64) uint8: for each group, byte position and byte
    value, the fewest bits (at most cap) in which the value differs from
    that byte of any hash of the group; group block * 128 + k in byte k's
    low nibble, group block * 128 + 64 + k in its high nibble."""
    blocks = -(-groups // BLOCK_GROUPS)
    tables = np.full((blocks, BYTES, 256, _ROW_BYTES), cap | (cap << 4), dtype=np.uint8)
    for g in range(groups):
        block, lane = g // BLOCK_GROUPS, g % BLOCK_GROUPS
        byte, shift = lane % _ROW_BYTES, 4 * (lane // _ROW_BYTES)
        keep = 0xF0 if shift == 0 else 0x0F
        for position in range(BYTES):
            for value in range(256):
                fewest = cap
                for m in range(g * group_size, (g + 1) * group_size):
                    d = popcount_byte[value ^ padded[m, position]]
                    if d < fewest:
                        fewest = d
                old = tables[block, position, value, byte]
                tables[block, position, value, byte] = (old & keep) | (fewest << shift)
    return tables


@intrinsic
def _bounds_within(typingctx, table, view, radius, masks_out):
    """Whether any of a block's 128 groups' bounds for the view is within
    the radius; masks_out: which (the low nibbles' 64 groups, the high
    nibbles'). The bound is the sum over the view's 32 bytes of the table
    rows they pick (64 bytes, one 512-bit vector, each 128 values of 4
    bits): written out here because the compiler, left to itself, turns
    the loop over bytes into gathers (5x slower)."""
    sig = types.boolean(table, view, types.uint8, masks_out)

    def codegen(context, builder, signature, args):
        table_struct = context.make_array(signature.args[0])(context, builder, args[0])
        view_struct = context.make_array(signature.args[1])(context, builder, args[1])
        i8, i64 = ir.IntType(8), ir.IntType(64)
        vector = ir.VectorType(i8, _ROW_BYTES)
        rows = builder.bitcast(table_struct.data, vector.as_pointer())
        loaded = []
        for position in range(BYTES):
            value = builder.load(builder.gep(view_struct.data, [i64(position)]))
            row = builder.add(i64(position * 256), builder.zext(value, i64))
            loaded.append(builder.load(builder.gep(rows, [row]), align=1))
        four = ir.Constant(vector, [ir.Constant(i8, 4)] * _ROW_BYTES)
        # two rows' nibbles add without carry (7 + 7 < 16); the bytes of
        # all pairs summed wrap, the high nibbles summed apart do not, and
        # the low nibbles' sum is the difference
        pairs = [builder.add(a, b) for a, b in zip(loaded[::2], loaded[1::2], strict=True)]
        highs = [builder.lshr(p, four) for p in pairs]
        while len(pairs) > 1:
            pairs = [builder.add(a, b) for a, b in zip(pairs[::2], pairs[1::2], strict=True)]
            highs = [builder.add(a, b) for a, b in zip(highs[::2], highs[1::2], strict=True)]
        high = highs[0]
        low = builder.sub(pairs[0], builder.shl(high, four))
        limit = builder.insert_element(ir.Constant(vector, ir.Undefined), args[2], i64(0))
        limit = builder.shuffle_vector(
            limit, limit, ir.Constant(ir.VectorType(ir.IntType(32), _ROW_BYTES), 0)
        )
        low_mask = builder.bitcast(builder.icmp_unsigned("<=", low, limit), i64)
        high_mask = builder.bitcast(builder.icmp_unsigned("<=", high, limit), i64)
        masks_struct = context.make_array(signature.args[3])(context, builder, args[3])
        builder.store(low_mask, builder.gep(masks_struct.data, [i64(0)]))
        builder.store(high_mask, builder.gep(masks_struct.data, [i64(1)]))
        return builder.icmp_unsigned("!=", builder.or_(low_mask, high_mask), i64(0))

    return sig, codegen


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


@numba.njit(nogil=True, cache=True)
def _scan(views, view_words, tables, hash_words, group_size, groups, radius):  # pragma: no cover
    """Block by block: a block's tables (512 KB) stay in the core's cache
    while every view reads them."""
    n = views.shape[0]
    out = np.zeros(n, dtype=np.bool_)
    masks = np.empty(2, dtype=np.uint64)
    limit = np.uint8(radius)
    for block in range(tables.shape[0]):
        table = tables[block]
        for v in range(n):
            if out[v] or not _bounds_within(table, views[v], limit, masks):
                continue
            # the groups that may be within, compared hash by hash
            for half in range(2):
                mask = masks[half]
                k = 0
                while mask and not out[v]:
                    if mask & np.uint64(1):
                        g = block * BLOCK_GROUPS + half * _ROW_BYTES + k
                        if g < groups and _group_within(
                            view_words[v], hash_words, g * group_size, group_size, radius
                        ):
                            out[v] = True
                    mask >>= np.uint64(1)
                    k += 1
    return out


@numba.njit(nogil=True, cache=True)
def _every_pair(view_words, hash_words, radius):  # pragma: no cover - compiled
    n = view_words.shape[0]
    out = np.zeros(n, dtype=np.bool_)
    for v in range(n):
        out[v] = _group_within(view_words[v], hash_words, 0, hash_words.shape[0], radius)
    return out
