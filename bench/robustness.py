"""Recall per re-upload transform, and false matches over thousands of unrelated
real pictures, as the service decides them.

    .venv/bin/python bench/robustness.py                  # full corpus (built on first use)
    .venv/bin/python bench/robustness.py --short          # ~300 pictures, CI
    .venv/bin/python bench/robustness.py --json out.json  # and a machine-readable summary
    .venv/bin/python bench/robustness.py --hard           # + striped and faded known pictures
    .venv/bin/python bench/robustness.py --review 52 --low-quality-review 40   # other thresholds
    .venv/bin/python bench/robustness.py --pdq-only       # PDQ views alone (minutes, not an hour)

Everything goes through the service's own core (hashsvc.core.Core over a
temporary SQLite store, default config, hashing in process): the known pictures
are added as entries of one set (Curation.add_entry, as AddEntry does) and every
query is Core.match on the bytes (as Match does), so whatever signals the
service has (PDQ today, local features when they land) decide, with the
service's thresholds, quality floor and evidence rules.

Known pictures: the real photos of bench/photos.py and a few hundred photos of
the corpus (bench/corpus.py), held out of the unrelated pool. Queries:
- every transformed copy of every known picture (bench/transforms.py): its own
  entry at REVIEW or BLOCK is a hit; any OTHER entry at REVIEW or BLOCK is a
  false match;
- every other corpus picture (thousands: photos, artwork, video frames, flat,
  gradients, patterns, text screenshots, document pages): any match at REVIEW or
  BLOCK is a false match.
Collage and feed tiles are unrelated corpus pictures, never known ones.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pickle
import statistics
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import transforms as edits
from corpus import CACHE, CATEGORIES, NEAR_DUPLICATE, CorpusPicture, load_corpus
from explain_misses import MissExplainer
from photos import load_photos
from PIL import Image
from transforms import jpeg, robustness_transforms

from hashsvc.base.decisions import strictest
from hashsvc.core.config import Config
from hashsvc.core.core import Core, MatchQuery
from hashsvc.index.binary import split_signal_id
from hashsvc.matching import local_geometry
from hashsvc.matching.policy import ALLOW, BLOCK, REVIEW, LocalFeatureMatching, PdqPolicy
from hashsvc.media import image, local_features
from hashsvc.media.image import pdq_hash
from hashsvc.media.limits import ImageLimits
from hashsvc_testing.image_media import faded, noise_image, striped_image

SET = "bench"
# Corpus pictures of the same scene as a bench photo that neither PDQ nor a
# video's name tells: the other view of scikit-image's stereo pair, the same
# motorcycle in the same garage from a camera shifted sideways, 84 PDQ bits
# from motorcycle_left. As a collage tile (collage_2x2+caption of
# exif-rotn-1.jpg) local features matched it to motorcycle_left (58 inliers,
# agreement 0.339): counted as a false match of different content, it is not.
SAME_SCENE = {"scikit-image:motorcycle_right.png": "skimage-motorcycle_left.png"}
MIN_TRANSFORMED = 256  # px, the shorter side of a known corpus photo whose edits are queried
CALLER = "bench"


def open_core(
    folder: str,
    pdq: PdqPolicy,
    local: LocalFeatureMatching | None = None,
    contrast_below: int | None = None,
) -> Core:
    # Every upload hashed in one step: the verifications below read each
    # query's local features, which a flood of blocked copies (this bench)
    # would otherwise leave uncomputed (hashsvc/core/two_step.py; decisions
    # are the same either way: README, Cost of an image Match).
    one_step = ImageLimits(local_after_views_share=float("inf"))
    if contrast_below is not None:
        one_step = dataclasses.replace(one_step, features_contrast_below=contrast_below)
    config = Config(
        db_url=f"sqlite:///{folder}/bench.db",
        pdq=pdq,
        local_features=local or LocalFeatureMatching(),
        image=one_step,
    )
    core = Core.open(config, hash_in_process=True)
    core.start()
    core.curation.create_set(SET)
    return core


def picture_bits(img) -> np.ndarray:
    """The PDQ bits of a picture as bench/corpus.py hashes it (whole, <= 1024 px)."""
    img = img.copy()
    img.thumbnail((1024, 1024))
    value, _ = pdq_hash(np.asarray(img.convert("RGB")))
    return np.unpackbits(np.frombuffer(value, dtype=np.uint8))


def split_unrelated(
    corpus: list[CorpusPicture], photos: list[tuple[str, Image.Image]], known_files: set[str]
) -> tuple[list[CorpusPicture], list[str]]:
    """The corpus pictures unrelated to every known picture, and the names of
    those left out as the same content as a bench photo: a PDQ near-duplicate,
    another frame of a known video, or the same scene by name (SAME_SCENE).
    Pictures in known_files (known themselves) are in neither."""
    # a corpus picture that IS a bench photo (scikit-image's, in both) is not unrelated
    photo_bits = np.stack([picture_bits(img) for _, img in photos])
    photo_names = {name for name, _ in photos}
    known_videos = {name.split("-")[1] for name, _ in photos if name.startswith("frame-")}
    unrelated, same_as_known = [], []
    for p in corpus:
        if p.file in known_files:
            continue
        bits = np.unpackbits(np.frombuffer(bytes.fromhex(p.pdq), dtype=np.uint8))
        if int((photo_bits != bits).sum(axis=1).min()) <= NEAR_DUPLICATE:
            same_as_known.append(p.name)
        elif p.category == "video frame" and p.name.split("-")[0] in known_videos:
            # another frame (or another encoding: chair-19/chair-20, pattern-sd/hd)
            # of a video a bench photo is a frame of: the same scene, not unrelated
            same_as_known.append(p.name)
        elif SAME_SCENE.get(p.name) in photo_names:
            same_as_known.append(p.name)
        else:
            unrelated.append(p)
    return unrelated, same_as_known


def pdq_views(signals) -> tuple[np.ndarray, list[int]]:
    """(views x 32 bytes, their qualities) of the PDQ signals among `signals`."""
    pdq = [s for s in signals if s.kind == "pdq"]
    if not pdq:
        return np.zeros((0, 32), dtype=np.uint8), []
    values = np.frombuffer(b"".join(s.value for s in pdq), dtype=np.uint8).reshape(-1, 32)
    return values, [int(s.quality or 0) for s in pdq]


class KnownViews:
    """The PDQ views stored for every known entry, to report how close an unrelated
    query came (the core returns only what matched)."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self.rows: list[np.ndarray] = []
        self.owner: list[int] = []
        self.quality: list[int] = []

    def add(self, name: str, signals) -> None:
        values, quality = pdq_views(signals)
        for row, q in zip(values, quality, strict=True):
            self.rows.append(row)
            self.owner.append(len(self.names))
            self.quality.append(q)
        self.names.append(name)

    def freeze(self) -> None:
        self.matrix = np.stack(self.rows)
        self.owner_arr = np.asarray(self.owner)
        self.quality_arr = np.asarray(self.quality)

    def closest(self, signals, skip: str | None = None) -> dict | None:
        """The closest (query view, known view) pair over entries other than `skip`."""
        values, quality = pdq_views(signals)
        if not len(values):
            return None
        d = np.unpackbits(np.bitwise_xor(values[:, None, :], self.matrix[None]), axis=2).sum(axis=2)
        if skip is not None:
            d[:, self.owner_arr == self.names.index(skip)] = 999
        qi, ki = np.unravel_index(np.argmin(d), d.shape)
        # the closest pair the quality floor lets through, too
        floor = Config().pdq.quality_floor
        ok = (np.asarray(quality)[:, None] >= floor) & (self.quality_arr[None, :] >= floor)
        d_ok = np.where(ok, d, 999)
        qj, kj = np.unravel_index(np.argmin(d_ok), d_ok.shape)
        return {
            "distance": int(d[qi, ki]),
            "entry": self.names[self.owner_arr[ki]],
            "query_quality": quality[qi],
            "known_quality": int(self.quality_arr[ki]),
            "distance_above_floor": int(d_ok[qj, kj]) if d_ok[qj, kj] < 999 else None,
            "entry_above_floor": self.names[self.owner_arr[kj]] if d_ok[qj, kj] < 999 else None,
        }


class KnownFeatures:
    """The local features stored for every known entry, to report how close an
    unrelated query came to a local-feature decision (the core returns only
    what matched): each query signal's candidates from the service's own
    feature index (top_k as configured) are verified as the matcher does."""

    def __init__(self, core: Core) -> None:
        self.core = core
        self.by_entry_id: dict[int, tuple[str, list]] = {}

    def add(self, name: str, entry_id: int, signals) -> None:
        self.by_entry_id[entry_id] = (name, signals)

    def verified(self, signals) -> list[dict]:
        """Every verification of the query's candidates: each local_features
        signal's top_k from the service's feature index (a superset of the
        matcher's max_verified best-voted), with the entry's name."""
        local = [s for s in signals if s.kind == "local_features"]
        index = self.core.live.features
        if not local or not len(index):
            return []
        decoded = [local_features.decode(s.value) for s in local]
        hits = index.search([f.descriptors for f in decoded], self.core.config.local_features.top_k)
        found = []
        for sig, query, candidates in zip(local, decoded, hits, strict=True):
            for sid, _ in candidates:
                entry_id, variant_no = split_signal_id(sid)
                name, known_signals = self.by_entry_id.get(entry_id, (None, None))
                if name is None or variant_no >= len(known_signals):
                    continue
                known = local_features.decode(known_signals[variant_no].value)
                v = local_geometry.verify(query, known)
                if v is not None:
                    found.append(
                        {"entry": name, "query_variant": sig.variant, "inliers": v.inliers,
                         "coverage": round(v.coverage, 3), "agreement": round(v.agreement, 3),
                         "scale": round(v.scale, 2)}
                    )  # fmt: skip
        return found


def nearness(v: dict) -> float:
    """How far towards REVIEW a verification came: the weakest of its three
    shares of a review minimum (1.0: it would be REVIEW)."""
    t = local_geometry.DEFAULT_THRESHOLDS
    _, review_agreement = t.agreement_floors(v["inliers"])
    return min(
        v["inliers"] / t.review_inliers,
        v["coverage"] / t.review_coverage,
        v["agreement"] / review_agreement,
    )


def history_counts(core: Core) -> Counter:
    """The run's history records by (rpc, decision, status). A Match answered OK
    always has a decision; records of other rpcs (HistoryCheckpoint, written
    every history_checkpoint_records or _seconds) have none, and are no pictures."""
    return Counter(
        (r.rpc, r.decision, r.status) for r in core.audit.export(core.audit.make_filter())
    )


def evidence(match) -> dict:
    """What the public match JSON says about one match (inliers, coverage... when present)."""
    keep = {}
    for key, value in match.public_json().items():
        if isinstance(value, dict) and key != "labels":
            keep.update(value)  # a signal's own evidence, e.g. "local_features": {inliers, ...}
        elif key not in ("labels", "set", "segments"):
            keep[key] = value
    return keep


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--short", action="store_true", help="~300 pictures, for CI")
    parser.add_argument("--known-corpus", type=int, help="corpus photos held out as known")
    parser.add_argument("--transforms", help="comma-separated names (default: all)")
    parser.add_argument("--unrelated", type=int, help="at most this many unrelated queries")
    parser.add_argument("--json", help="write a machine-readable summary here")
    parser.add_argument("--block", type=int, help="PDQ block distance to try")
    parser.add_argument("--review", type=int, help="PDQ review distance to try")
    parser.add_argument("--low-quality-review", type=int, help="PDQ low-quality review distance")
    parser.add_argument(
        "--spare",
        type=int,
        help="local_features.max_verified_spare to try (0: no spare pass, as before it)",
    )
    parser.add_argument(
        "--min-votes", type=float, help="local_features.min_votes to try (lowest score verified)"
    )
    parser.add_argument(
        "--spare-min",
        type=float,
        help="local_features.min_votes_spare to try (the lowest score the spare pass verifies)",
    )
    parser.add_argument(
        "--contrast-below",
        type=int,
        help="image.features_contrast_below to try (0: no equalised features, as before them)",
    )
    parser.add_argument(
        "--finer-detail-counted",
        action="store_true",
        help="agreement as before the pyramid levels: an upload's keypoints finer than the"
        " known picture's finest level count (local_geometry._beyond_known leaves nothing out)",
    )
    parser.add_argument(
        "--hard", action="store_true", help="+ 30 striped and 10 faded pictures as known entries"
    )
    parser.add_argument(
        "--explain",
        action="store_true",
        help="say why each copy missed by local features was missed (bench/explain_misses.py)",
    )
    parser.add_argument(
        "--dump",
        help="write every known picture's and query's local_features blobs here (pickle), to"
        " try verification changes offline (bench/local_offline.py)",
    )
    parser.add_argument(
        "--pdq-only",
        action="store_true",
        help="no local_features signal: the PDQ views' precision and recall alone, fast",
    )
    parser.add_argument(
        "--orb-levels", type=int, help="ORB pyramid levels to try (known pictures and uploads)"
    )
    parser.add_argument(
        "--orb-fast", type=int, help="ORB FAST threshold to try (known pictures and uploads)"
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=20261124,
        help="the draw of the transformed copies (crop places, angles, collage fillers); runs"
        " of two versions with the same seed and transforms are paired on the same copies",
    )
    args = parser.parse_args()
    orb = {"pyramid_levels": args.orb_levels, "fast_threshold": args.orb_fast}
    orb = {k: v for k, v in orb.items() if v is not None}
    if orb:
        # every extraction (known pictures, uploads, tiles) with these ORB settings
        detector = local_features._detector
        local_features._detector = lambda limits: detector(dataclasses.replace(limits, **orb))
    if args.finer_detail_counted:
        local_geometry._beyond_known = lambda query, scale: np.zeros(len(query), bool)
    if args.pdq_only:
        # the core hashes in process, through this module's function
        image.local_feature_signals = lambda *args, **kwargs: []
    # other default thresholds, to choose them from measurements
    pdq_policy = Config().pdq
    for field, value in (
        ("block_distance", args.block),
        ("review_distance", args.review),
        ("low_quality_review_distance", args.low_quality_review),
    ):
        if value is not None:
            pdq_policy = dataclasses.replace(pdq_policy, **{field: value})

    corpus = load_corpus(short=args.short)
    held = args.known_corpus if args.known_corpus is not None else (8 if args.short else 200)
    corpus_photos = [p for p in corpus if p.category == "photo" and p.source != "pypi"]
    step = max(1, len(corpus_photos) // max(1, held))
    known_corpus = corpus_photos[::step][:held]
    known_files = {p.file for p in known_corpus}
    photos = load_photos(12 if args.short else None)
    unrelated, same_as_known = split_unrelated(corpus, photos, known_files)
    known = [(name, img) for name, img in photos] + [(p.name, p.open()) for p in known_corpus]
    hard = []
    if args.hard:
        # striped pictures and faded textures, many under the PDQ quality floor, as
        # known entries: unrelated pictures must not reach them, their copies should
        hard = [(f"stripes{s}", striped_image(s)) for s in range(30)]
        hard += [(f"faded{n}", faded(noise_image(n))) for n in range(10)]
    # Every known picture is an entry (small ones too: a 74 px roundel on white is
    # a hard case for precision), but only those large enough for a 30% crop or a
    # 3x3 tile to mean something are transformed for recall.
    transformed = known[: len(photos)] + [
        (name, img) for name, img in known[len(photos) :] if min(img.size) >= MIN_TRANSFORMED
    ]
    # the hard ones are transformed too, but their recall is a row of its own
    hard_names = {name for name, _ in hard}
    known += hard
    transformed += hard
    # collage and feed tiles: unrelated pictures with something to see
    fillers = [p.open() for p in unrelated if p.category in ("photo", "artwork", "video frame")][
        :60
    ]
    if args.unrelated is not None and args.unrelated < len(unrelated):
        every = len(unrelated) / args.unrelated  # a spread over every category
        unrelated = [unrelated[int(i * every)] for i in range(args.unrelated)]
    transforms = robustness_transforms(fillers)
    if args.transforms:
        wanted = args.transforms.split(",")
        transforms = {k: v for k, v in transforms.items() if k in wanted}

    summary: dict = {"short": args.short}
    # the store in memory where the machine has it: every Match writes its
    # history record, and the bench times the service, not the disk's fsync
    shm = "/dev/shm" if Path("/dev/shm").is_dir() else None
    with tempfile.TemporaryDirectory(prefix="hashsvc-bench-", dir=shm) as folder:
        local = LocalFeatureMatching()
        if args.spare is not None:
            local = dataclasses.replace(local, max_verified_spare=args.spare)
        if args.spare_min is not None:
            local = dataclasses.replace(local, min_votes_spare=args.spare_min)
        if args.min_votes is not None:
            local = dataclasses.replace(local, min_votes=args.min_votes)
        core = open_core(folder, pdq_policy, local, args.contrast_below)
        try:
            views = KnownViews()
            features = KnownFeatures(core)
            explainer = MissExplainer(core) if args.explain else None
            dump: dict = {"known": {}, "queries": [], "unrelated": []}

            def blobs(signals) -> list[tuple[str, bytes]]:
                return [(s.variant, s.value) for s in signals if s.kind == "local_features"]

            add_ms = []
            for name, img in known:
                data = jpeg(img, 92)
                started = time.perf_counter()
                added = core.curation.add_entry(SET, name, {}, CALLER, media=data)
                add_ms.append((time.perf_counter() - started) * 1000)
                views.add(name, core.hashing.hash_known(data).signals)
                features.add(name, added.id, added.signals)
                dump["known"][name] = blobs(added.signals)
                if explainer is not None:
                    explainer.add_known(name, added.id, added.signals)
            views.freeze()
            pdq = core.config.pdq
            print(
                f"known: {len(known)} pictures ({len(photos)} bench photos, {len(known_corpus)}"
                f" corpus photos); unrelated: {len(unrelated)} corpus pictures"
                f" ({len(same_as_known)} left out: the same content as a bench photo);"
                f" transformed: the"
                f" bench photos and corpus photos of >= {MIN_TRANSFORMED} px, {len(transformed)};"
                f" {len(transforms)} transforms; PDQ block <= {pdq.block_distance},"
                f" review <= {pdq.review_distance}, quality floor {pdq.quality_floor};"
                f" AddEntry median {statistics.median(add_ms):.0f} ms",
                flush=True,
            )
            summary["known"] = len(known)
            summary["transformed"] = len(transformed)
            summary["unrelated"] = len(unrelated)
            summary["thresholds"] = {
                "pdq": {
                    "block": pdq.block_distance,
                    "review": pdq.review_distance,
                    "quality_floor": pdq.quality_floor,
                }
            }
            rng = np.random.default_rng(args.seed)
            rows, false_matches, closest = [], [], {}
            transform_ms: list[float] = []
            misses: dict[str, list[str]] = defaultdict(list)

            def note_false(query: str, category: str, m) -> None:
                false_matches.append(
                    {"query": query, "category": category, "decision": m.decision,
                     "entry": m.entry_name, **evidence(m)}
                )  # fmt: skip
                best = closest.get(("match", m.signal_type))
                if best is None or (m.decision == BLOCK, -m.distance) > (
                    best["decision"] == BLOCK,
                    -best["distance"],
                ):
                    closest[("match", m.signal_type)] = {
                        "query": query, "entry": m.entry_name, "decision": m.decision,
                        **evidence(m),
                    }  # fmt: skip

            verifications: list[dict] = []  # every query's, for choosing thresholds

            def note_local(query: str, group: str, signals, skip: str | None, own_rest) -> None:
                """Record the query's verifications (its own entry's and the
                others'), the decision of its other signals, and the closest
                unrelated one."""
                found = features.verified(signals)
                others = [v for v in found if v["entry"] != skip]
                verifications.append(
                    {"query": query, "group": group, "rest": own_rest,
                     "own": [v for v in found if v["entry"] == skip], "others": others}
                )  # fmt: skip
                for v in others:
                    best = closest.get(("local", "any"))
                    if best is None or nearness(v) > best["nearness"]:
                        closest[("local", "any")] = {
                            "query": query,
                            "nearness": round(nearness(v), 3),
                            **v,
                        }

            def note_pdq(query: str, signals, skip: str | None) -> None:
                near = views.closest(signals, skip)
                if near is None:
                    return
                best = closest.get(("pdq", "any"))
                if best is None or near["distance"] < best["distance"]:
                    closest[("pdq", "any")] = {"query": query, **near}
                above = near["distance_above_floor"]
                best = closest.get(("pdq", "floor"))
                if above is not None and (best is None or above < best["distance_above_floor"]):
                    closest[("pdq", "floor")] = {"query": query, **near}

            # the unrelated pictures first: precision is the hard part
            per_category: dict[str, Counter] = defaultdict(Counter)
            unrelated_ms: list[float] = []
            for p in unrelated:
                data = (CACHE / p.file).read_bytes()  # the picture as it was found
                started = time.perf_counter()
                outcome = core.match(MatchQuery(media=data), CALLER)
                unrelated_ms.append((time.perf_counter() - started) * 1000)
                per_category[p.category]["pictures"] += 1
                dump["unrelated"].append((p.name, p.category, blobs(outcome.query_signals)))
                flagged = [m for m in outcome.matches if m.decision != ALLOW]
                for m in flagged:
                    note_false(p.name, p.category, m)
                decision = strictest([m.decision for m in flagged]) if flagged else ALLOW
                per_category[p.category]["review"] += decision == REVIEW
                per_category[p.category]["block"] += decision == BLOCK
                note_pdq(p.name, outcome.query_signals, skip=None)
                rest = [m.decision for m in flagged if m.signal_type != "local_features"]
                note_local(
                    p.name,
                    p.category,
                    outcome.query_signals,
                    None,
                    strictest(rest) if rest else ALLOW,
                )
            print(
                f"unrelated: {len(unrelated)} queries,"
                f" {sum(c['review'] + c['block'] for c in per_category.values())} flagged",
                file=sys.stderr,
                flush=True,
            )
            hard_hits: Counter[str] = Counter()
            for tname, transform in transforms.items():
                hits = Counter()
                by_signal: Counter[str] = Counter()
                for name, img in transformed:
                    edits.last_placement[0] = None
                    data = transform(img, rng)
                    started = time.perf_counter()
                    outcome = core.match(MatchQuery(media=data), CALLER)
                    transform_ms.append((time.perf_counter() - started) * 1000)
                    own = [m for m in outcome.matches if m.entry_name == name]
                    for m in outcome.matches:
                        if m.entry_name != name and m.decision != ALLOW:
                            note_false(f"{tname}({name})", "transform", m)
                    note_pdq(f"{tname}({name})", outcome.query_signals, skip=name)
                    rest = [m.decision for m in own if m.signal_type != "local_features"]
                    note_local(
                        f"{tname}({name})", tname, outcome.query_signals, name,
                        strictest(rest) if rest else ALLOW,
                    )  # fmt: skip
                    decision = strictest([m.decision for m in own]) if own else ALLOW
                    dump["queries"].append(
                        (
                            tname,
                            name,
                            decision,
                            blobs(outcome.query_signals),
                            strictest(rest) if rest else ALLOW,
                        )
                    )
                    if name in hard_names:
                        hard_hits[decision] += 1
                        continue
                    if explainer is not None:
                        explainer.explain(
                            tname, name, data, outcome, decision, edits.last_placement[0]
                        )
                    hits[decision] += 1
                    if decision == ALLOW:
                        misses[tname].append(name)
                    else:
                        best = min(own, key=lambda m: (m.decision != BLOCK, m.distance))
                        by_signal[f"{best.signal_type}:{best.decision}"] += 1
                n = len(transformed) - len(hard)
                rows.append(
                    {
                        "transform": tname,
                        "queries": n,
                        "recall_block": hits[BLOCK] / n,
                        "recall_review": (hits[BLOCK] + hits[REVIEW]) / n,
                        "decided_by": dict(by_signal),
                    }
                )
                r = rows[-1]
                print(
                    f"{tname:<24}{r['recall_block']:>8.2f}{r['recall_review']:>8.2f}  "
                    + " ".join(f"{k}={v}" for k, v in sorted(by_signal.items())),
                    file=sys.stderr,  # progress; the table below is the result
                    flush=True,
                )

            records = history_counts(core)
        finally:
            core.close()

    print(f"\n{'transform':<24}{'@block':>8}{'@review':>8}  decided by (signal:decision=count)")
    for r in rows:
        print(
            f"{r['transform']:<24}{r['recall_block']:>8.2f}{r['recall_review']:>8.2f}  "
            + " ".join(f"{k}={v}" for k, v in sorted(r["decided_by"].items()))
        )
    if rows:
        print(
            f"{'ALL (mean)':<24}{statistics.mean(r['recall_block'] for r in rows):>8.3f}"
            f"{statistics.mean(r['recall_review'] for r in rows):>8.3f}"
        )
    if hard and hard_hits:  # none without transforms (--transforms none: precision alone)
        n = sum(hard_hits.values())
        print(
            f"hard pictures' own copies ({n}, every transform): recall@block"
            f" {hard_hits[BLOCK] / n:.3f},"
            f" recall@review {(hard_hits[BLOCK] + hard_hits[REVIEW]) / n:.3f}"
        )
        summary["hard_recall"] = {k: v / n for k, v in hard_hits.items()}
    print(f"\n{'unrelated category':<20}{'pictures':>9}{'review':>8}{'block':>7}")
    for category in CATEGORIES:
        c = per_category.get(category, Counter())
        print(f"{category:<20}{c['pictures']:>9}{c['review']:>8}{c['block']:>7}")
    total = sum(c["pictures"] for c in per_category.values())
    print(
        f"{'ALL':<20}{total:>9}{sum(c['review'] for c in per_category.values()):>8}"
        f"{sum(c['block'] for c in per_category.values()):>7}"
    )
    print(f"\nfalse matches (REVIEW or BLOCK on an unrelated entry): {len(false_matches)}")
    for f in false_matches[:40]:
        print(
            f"  {f['decision']:<6} {f['query']} [{f['category']}] -> {f['entry']}"
            f" by {f['signal_type']} d={f['distance']}"
            f" ({f.get('query_variant', '')} ~ {f.get('known_variant', '')})"
            + "".join(
                f" {k}={f[k]}"
                for k in ("inliers", "coverage", "query_coverage", "scale", "angle")
                if k in f
            )
        )
    print("\nclosest unrelated pairs:")
    any_pdq, floor_pdq = closest.get(("pdq", "any")), closest.get(("pdq", "floor"))
    if any_pdq:
        print(
            f"  pdq, any quality: d={any_pdq['distance']} {any_pdq['query']} ~ {any_pdq['entry']}"
            f" (qualities {any_pdq['query_quality']}/{any_pdq['known_quality']});"
            f" margin to review {any_pdq['distance'] - pdq.review_distance:+d}"
        )
    if floor_pdq:
        d = floor_pdq["distance_above_floor"]
        print(
            f"  pdq, both above the quality floor: d={d} {floor_pdq['query']} ~"
            f" {floor_pdq['entry_above_floor']}; margin to review {d - pdq.review_distance:+d},"
            f" to block {d - pdq.block_distance:+d}"
        )
    near = closest.get(("local", "any"))
    if near:
        t = local_geometry.DEFAULT_THRESHOLDS
        print(
            f"  local_features, closest verified unrelated pair: {near['query']}"
            f" [{near['query_variant']}] ~ {near['entry']} inliers={near['inliers']}"
            f" coverage={near['coverage']} agreement={near['agreement']} scale={near['scale']};"
            f" at {near['nearness']:.2f} of review (needs {t.review_inliers} inliers,"
            f" coverage {t.review_coverage}, agreement {t.agreement_floors(near['inliers'])[1]};"
            " margin"
            f" {1 - near['nearness']:+.2f})"
        )
    for (kind, signal), c in sorted(closest.items()):
        if kind == "match":
            print(
                f"  {signal} (a false match): {c['decision']} {c['query']} ~ {c['entry']} "
                + " ".join(
                    f"{k}={c[k]}"
                    for k in ("distance", "inliers", "coverage", "query_coverage", "scale", "angle")
                    if k in c
                )
            )
    if not any(kind == "match" for kind, _ in closest):
        print("  no signal matched an unrelated picture at REVIEW or BLOCK")
    t_med = statistics.median(transform_ms) if transform_ms else 0.0
    u_med = statistics.median(unrelated_ms) if unrelated_ms else 0.0
    print(
        f"\nCore.match (hash + match + history record, one core): median {t_med:.1f} ms per"
        f" transformed query ({len(transform_ms)}), {u_med:.1f} ms per unrelated picture"
        f" ({len(unrelated_ms)})"
    )
    if misses:
        print("\nmissed (transform: known pictures):")
        for tname, names in misses.items():
            print(
                f"  {tname} ({len(names)}): {', '.join(names[:12])}"
                + (" ..." if len(names) > 12 else "")
            )

    if explainer is not None:
        print(explainer.report())
    if args.dump:
        with open(args.dump, "wb") as out:
            pickle.dump(dump, out)
    print(
        "\nhistory records (rpc, decision, status: count): "
        + ", ".join(
            f"{rpc} {decision or '-'} {status}: {n}"
            for (rpc, decision, status), n in sorted(records.items())
        )
    )
    undecided = sum(
        n for (rpc, decision, status), n in records.items()
        if rpc == "Match" and status == "OK" and not decision
    )  # fmt: skip
    if undecided:
        print(f"ERROR: {undecided} Match calls answered OK without a decision", file=sys.stderr)
    if args.json:
        summary.update(
            history={
                f"{rpc}:{decision}:{status}": n for (rpc, decision, status), n in records.items()
            },
            transforms=rows,
            unrelated_by_category={k: dict(v) for k, v in per_category.items()},
            false_matches=false_matches,
            closest={f"{k}:{s}": v for (k, s), v in closest.items()},
            median_ms={"transformed": t_med, "unrelated": u_med},
            misses=misses,
            verifications=verifications,
            explained=explainer.to_json() if explainer is not None else None,
        )
        Path(args.json).write_text(json.dumps(summary, indent=1, default=str))
        print(f"\nsummary: {args.json}", file=sys.stderr)
    if undecided:
        sys.exit(1)


if __name__ == "__main__":
    main()
