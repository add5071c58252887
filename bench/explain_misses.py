"""Why a transformed copy of a known picture was not found (or not blocked) by
local features: bench/robustness.py --explain.

For each miss it checks, in the order the service works, where the picture was
lost, and names the first step that lost it:

- known: no features     the known picture got no local_features signal
- query: no features     the upload got none (whole picture and tiles refused)
- tile: not cut          (collage, feed, screenshot) no tile the service cut
                         covers the place the picture was shown (IoU < 0.7)
- tile: no features      the right tile was cut but its extraction was refused
- verify: none           no query signal and known signal agree on a
                         consistent transform (fewer than 8 inliers, or none
                         at all), checked directly, bypassing the index
- verify: below <level>  the best direct verification misses the level's
                         minimum on inliers, coverage and/or agreement (listed)
- index: not in top_k    the direct verification reaches the level but the
                         feature index did not return the entry for that
                         query signal among its top_k
- index: below min_votes / index: beyond max_verified
                         returned, but the matcher would not verify it
- other                  every step above passed (should not happen)
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass

import numpy as np
from PIL import Image

from hashsvc.core.core import Core
from hashsvc.index.binary import split_signal_id
from hashsvc.matching import local_geometry
from hashsvc.matching.local_thresholds import DEFAULT_THRESHOLDS
from hashsvc.matching.policy import ALLOW, BLOCK, REVIEW
from hashsvc.media import image, local_features, local_regions
from hashsvc.media.image import ImageLimits

TILED = ("collage", "feed", "screenshot")


def _iou(a, b) -> float:
    left, top = max(a[0], b[0]), max(a[1], b[1])
    right, bottom = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0, right - left) * max(0, bottom - top)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union else 0.0


def service_tiles(data: bytes) -> list[tuple[int, int, int, int]]:
    """The tiles the service cuts from an upload (image.region_signals), in
    pixels of the upload at full size."""
    rgb = image.decode_rgb(data, ImageLimits(), at_least=image.QUERY_DECODE_SIDE)
    grey = np.asarray(Image.fromarray(rgb).convert("L"), dtype=np.float32)
    full = image.decode_rgb(data, ImageLimits())
    boxes = local_regions.tiles(grey, scale=max(full.shape[:2]) / max(rgb.shape[:2]))
    sx, sy = full.shape[1] / rgb.shape[1], full.shape[0] / rgb.shape[0]
    return [(round(b[0] * sx), round(b[1] * sy), round(b[2] * sx), round(b[3] * sy)) for b in boxes]


@dataclass
class Miss:
    transform: str
    query: str
    level: str  # the level missed: "review" (not found) or "block" (found at review only)
    reason: str
    detail: str


class MissExplainer:
    """Per-miss reasons over one robustness run (see the module docstring)."""

    def __init__(self, core: Core) -> None:
        self.core = core
        self.known: dict[str, tuple[int, list]] = {}
        self.misses: list[Miss] = []

    def add_known(self, name: str, entry_id: int, signals) -> None:
        self.known[name] = (entry_id, [s for s in signals if s.kind == "local_features"])

    def explain(self, transform: str, name: str, data: bytes, outcome, decision: str, placed):
        """Record why `decision` (the own entry's) is not BLOCK, if it is not."""
        if decision == BLOCK:
            return
        level = "review" if decision == ALLOW else "block"
        reason, detail = self._reason(transform, name, data, outcome, level, placed)
        self.misses.append(Miss(transform, name, level, reason, detail))

    def _reason(self, transform, name, data, outcome, level, placed) -> tuple[str, str]:
        entry_id, known_sigs = self.known[name]
        if not known_sigs:
            return "known: no features", ""
        query_sigs = [s for s in outcome.query_signals if s.kind == "local_features"]
        tiled = any(t in transform for t in TILED)
        tile_note = ""
        if tiled and placed is not None:
            boxes = service_tiles(data)
            ious = [_iou(b, placed) for b in boxes]
            best = int(np.argmax(ious)) if ious else -1
            tile_note = (
                f"shown at {placed}, {len(boxes)} tiles cut, best IoU"
                f" {max(ious) if ious else 0:.2f}"
            )
            if not ious or ious[best] < 0.7:
                if not self._found_by(query_sigs, known_sigs, level):
                    return "tile: not cut", tile_note
            elif f"tile:{best}" not in {s.variant for s in query_sigs}:
                # tile_features numbers tiles by box, skipping refused ones
                variants = [s.variant for s in query_sigs if s.variant.startswith("tile:")]
                if not self._found_by(query_sigs, known_sigs, level):
                    return "tile: no features", f"{tile_note}; tile variants {variants}"
        if not query_sigs:
            return "query: no features", tile_note
        best = self._best_direct(query_sigs, known_sigs)
        if best is None:
            return "verify: none", tile_note
        sig, v = best
        evidence = (
            f"{sig.variant}: inliers={v.inliers} coverage={v.coverage:.2f}"
            f" agreement={v.agreement:.2f} scale={v.scale:.2f} angle={v.angle:.0f}"
        )
        if tile_note:
            evidence += f"; {tile_note}"
        failed = self._failed(v, level)
        if failed:
            return f"verify: below {level} ({'+'.join(failed)})", evidence
        return self._index_reason(outcome, entry_id, sig), evidence

    def _found_by(self, query_sigs, known_sigs, level) -> bool:
        best = self._best_direct(query_sigs, known_sigs)
        return best is not None and not self._failed(best[1], level)

    @staticmethod
    def _failed(v, level: str) -> list[str]:
        t = DEFAULT_THRESHOLDS
        block_agreement, review_agreement = t.agreement_floors(v.inliers)
        if level == "review":
            minima = (t.review_inliers, t.review_coverage, review_agreement)
        else:
            minima = (t.block_inliers, t.block_coverage, block_agreement)
        names = ("inliers", "coverage", "agreement")
        values = (v.inliers, v.coverage, v.agreement)
        return [n for n, x, m in zip(names, values, minima, strict=True) if x < m]

    @staticmethod
    def _best_direct(query_sigs, known_sigs):
        best = None
        for q in query_sigs:
            qf = local_features.decode(q.value)
            for k in known_sigs:
                v = local_geometry.verify(qf, local_features.decode(k.value))
                if v is None:
                    continue
                key = (DEFAULT_THRESHOLDS.level(v) or ALLOW, v.inliers)
                rank = {BLOCK: 2, REVIEW: 1, ALLOW: 0}[key[0]]
                if best is None or (rank, v.inliers) > best[0]:
                    best = ((rank, v.inliers), q, v)
        return None if best is None else (best[1], best[2])

    def _index_reason(self, outcome, entry_id: int, sig) -> str:
        """Where the matcher's candidate selection left the entry out."""
        config = self.core.config.local_features
        index = self.core.live.features
        query_sigs = [s for s in outcome.query_signals if s.kind == "local_features"]
        decoded = [local_features.decode(s.value) for s in query_sigs]
        # deeper than top_k, to say how far out of it the entry was
        results = index.search([f.descriptors for f in decoded], max(64, config.top_k))
        ranked, beyond = [], []
        for s, hits in zip(query_sigs, results, strict=True):
            for place, (sid, votes) in enumerate(hits, 1):
                row = (place, -votes, s.variant, split_signal_id(sid)[0], votes)
                (ranked if place <= config.top_k else beyond).append(row)
        ranked.sort(key=lambda r: (r[0], r[1]))
        own = [r for r in ranked if r[3] == entry_id and r[2] == sig.variant]
        if not own:
            deeper = [r for r in beyond if r[3] == entry_id and r[2] == sig.variant]
            if not deeper:
                return "index: not in top_k"
            worst_kept = min((r[4] for r in ranked if r[2] == sig.variant), default=0.0)
            return (
                f"index: not in top_k (place {deeper[0][0]}, {deeper[0][4]:.3f};"
                f" place {config.top_k} {worst_kept:.3f})"
            )
        kept = [r for r in ranked if r[4] >= config.min_votes][: config.max_verified]
        spare = min(config.max_verified_spare, config.max_verified - len(kept))
        if spare > 0:  # the matcher's spare pass (Matcher._search_local)
            kept += [r for r in ranked if config.min_votes_spare <= r[4] < config.min_votes][:spare]
        if own[0] not in kept and own[0][4] < config.min_votes:
            # the signal's other candidates: how far the right one stands out
            others = [f"{r[4]:.3f}" for r in ranked if r[2] == sig.variant and r[3] != entry_id]
            return (
                f"index: below min_votes ({own[0][4]:.3f}, place {own[0][0]};"
                f" others {' '.join(others[:4])})"
            )
        if own[0] not in kept:
            return "index: beyond max_verified"
        return "other"

    def report(self) -> str:
        lines = ["\nwhy copies were missed (local features; first step that lost them):"]
        by_transform: dict[str, list[Miss]] = defaultdict(list)
        for m in self.misses:
            by_transform[m.transform].append(m)
        for transform, misses in by_transform.items():
            for level in ("review", "block"):
                these = [m for m in misses if m.level == level]
                if not these:
                    continue
                counts = Counter(m.reason for m in these)
                lines.append(
                    f"  {transform} not at {level} ({len(these)}): "
                    + ", ".join(f"{r} {n}" for r, n in counts.most_common())
                )
                for m in these:
                    lines.append(f"      {m.query}: {m.reason}  {m.detail}")
        return "\n".join(lines)

    def to_json(self) -> list[dict]:
        return [m.__dict__ for m in self.misses]
