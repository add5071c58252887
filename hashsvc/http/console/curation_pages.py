"""Operators' pages: sets (create, labels, thresholds, enable/disable),
entries (search by name or label, signals, remove, release), media added by
upload, hash lists loaded with progress, and the export link."""

from __future__ import annotations

import os

from starlette.concurrency import iterate_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

import loaders
from hashdb import Thresholds
from hashsvc.base import validation
from hashsvc.base.errors import HashsvcError, InvalidArgument, status_name
from hashsvc.base.signals import SIGNAL_TYPES
from hashsvc.http.console.exports import entry_rows
from hashsvc.http.console.load_jobs import LoadJobs
from hashsvc.http.console.web import Caller, Refused, Web
from hashsvc.http.errors import HTTP_STATUS

UPLOAD_RPC = "Curation/AddEntryUpload"


def parse_labels(text: str) -> dict[str, str]:
    """`key=value` per line (or separated by commas)."""
    labels = {}
    for part in text.replace(",", "\n").splitlines():
        if not part.strip():
            continue
        key, eq, value = part.partition("=")
        if not eq or not key.strip():
            raise InvalidArgument(f"a label is key=value, not {part.strip()[:60]!r}")
        labels[key.strip()] = value.strip()
    return labels


# The thresholds a set can tune on its form (the core's Thresholds): a
# distance pair for each perceptual type, an evidence pair (inliers and
# coverage) for local features. Exact hashes have none (equal is a match).
DISTANCE_KINDS = tuple(k for k, t in SIGNAL_TYPES.items() if t.perceptual and not t.opaque)
EVIDENCE_KINDS = tuple(k for k, t in SIGNAL_TYPES.items() if t.opaque)
THRESHOLD_FORM = {
    "distance_kinds": [(k, SIGNAL_TYPES[k].max_distance) for k in DISTANCE_KINDS],
    "evidence_kinds": EVIDENCE_KINDS,
}


def parse_thresholds(form) -> dict[str, Thresholds]:
    """Thresholds from the form's `KIND_block_distance` / `KIND_review_distance`
    fields, and local features' `KIND_block_inliers`, `..._review_inliers`,
    `..._block_coverage`, `..._review_coverage` (a type left empty: the set
    keeps its own or the defaults). The core checks the values."""
    thresholds = {}
    for kind in DISTANCE_KINDS:
        distances = _numbers(form, kind, ("block_distance", "review_distance"), int)
        if distances:
            thresholds[kind] = Thresholds(*distances)
    for kind in EVIDENCE_KINDS:
        inliers = _numbers(form, kind, ("block_inliers", "review_inliers"), int)
        coverage = _numbers(form, kind, ("block_coverage", "review_coverage"), float)
        if inliers or coverage:
            if not (inliers and coverage):
                raise InvalidArgument(f"{kind} thresholds: give inliers and coverage, both pairs")
            thresholds[kind] = Thresholds(0, 0, *inliers, *coverage)
    return thresholds


def _numbers(form, kind: str, fields: tuple[str, str], number) -> tuple | None:
    raw = [str(form.get(f"{kind}_{name}", "")).strip()[:40] for name in fields]
    if not any(raw):
        return None
    try:
        return tuple(number(value) for value in raw)
    except ValueError:
        raise InvalidArgument(
            f"{kind} thresholds: give both {' and '.join(fields)} as numbers"
        ) from None


def routes(web: Web) -> list[Route]:
    jobs = LoadJobs(
        web.core,
        web.limits.max_load_jobs,
        web.limits.max_load_jobs_per_token,
        web.limits.shown_rejected_rows,
    )
    curation = web.core.curation

    def record(caller_name: str, action: str, **detail) -> None:
        # the same history record as the gRPC Curation servicer writes
        web.core.record_action(action, caller_name, detail, set_names=(detail["set"],))

    async def sets_page(request: Request):
        caller = await web.require(request, "Curation/ListSets")
        sets = await web.call(caller, curation.list_sets, True)
        return web.render(
            request,
            "sets.html",
            caller,
            sets=sets,
            may_create=caller.may("Curation/CreateSet"),
            **THRESHOLD_FORM,
        )

    async def create_set(request: Request):
        caller = await web.require(request, "Curation/CreateSet")
        form = await web.small_form(request, caller)

        def create():
            hash_set = curation.create_set(
                str(form.get("name", "")).strip(),
                str(form.get("description", "")),
                parse_labels(str(form.get("labels", ""))),
                parse_thresholds(form),
                allow_list=form.get("allow_list") == "on",
                review_blocks=form.get("review_blocks") == "on",
                review_target=form.get("review_target") == "on",
            )
            record(
                caller.name,
                "CreateSet",
                set=hash_set.name,
                allow_list=hash_set.allow_list,
                review_target=hash_set.review_target,
            )
            return hash_set

        hash_set = await web.call(caller, create)
        return await web.redirect(
            request, f"/sets/{hash_set.name}", caller, ("ok", f"set {hash_set.name} created")
        )

    async def set_page(request: Request):
        caller = await web.require(request, "Curation/GetSet")
        name = request.path_params["name"]
        search = request.query_params.get("q", "").strip()[:200]
        after = _after(request.query_params.get("after", ""))
        size = web.limits.page_size

        def read():
            hash_set = curation.get_set(name)
            if not caller.may("Curation/ListEntries"):
                return hash_set, [], False
            if search:
                entries = web.core.store.search_entries(hash_set.id, search, after, size + 1)
            else:
                entries = web.core.store.list_entries(hash_set.id, after, size + 1, 0)
            return hash_set, entries[:size], len(entries) > size

        hash_set, entries, more = await web.call(caller, read)
        return web.render(
            request,
            "set.html",
            caller,
            hash_set=hash_set,
            entries=entries,
            next_after=entries[-1].id if more else "",
            search=search,
            may_update=caller.may("Curation/UpdateSet"),
            may_upload=caller.may(UPLOAD_RPC),
            may_load=caller.may("Curation/BulkLoad"),
            may_export=caller.may("Curation/ExportEntries"),
            formats=loaders.FORMATS,
            upload_max_bytes=web.limits.upload_max_bytes,
            **THRESHOLD_FORM,
        )

    async def update_set(request: Request):
        caller = await web.require(request, "Curation/UpdateSet")
        form = await web.small_form(request, caller)
        name = request.path_params["name"]
        change = str(form.get("change", ""))

        def update():
            if change == "enable":
                hash_set = curation.update_set(name, enabled=True)
            elif change == "disable":
                hash_set = curation.update_set(name, enabled=False)
            elif change == "settings":
                hash_set = curation.update_set(
                    name,
                    description=str(form.get("description", "")),
                    labels=parse_labels(str(form.get("labels", ""))),
                    replace_labels=True,
                    thresholds=parse_thresholds(form),
                    review_blocks=form.get("review_blocks") == "on",
                    review_target=form.get("review_target") == "on",
                )
            else:
                raise InvalidArgument("change must be enable, disable or settings")
            record(
                caller.name,
                "UpdateSet",
                set=hash_set.name,
                enabled=hash_set.enabled,
                review_target=hash_set.review_target,
            )
            return hash_set

        await web.call(caller, update)
        return await web.redirect(request, f"/sets/{name}", caller, ("ok", f"set {name} updated"))

    async def entry_page(request: Request):
        caller = await web.require(request, "Curation/GetEntry")
        name, entry_name = request.path_params["name"], request.path_params["entry"]

        def read():
            entry = curation.get_entry(name, entry_name)
            alerts = web.core.store.open_flood_alerts([entry.id])
            return entry, alerts.get(entry.id, "")

        entry, flood = await web.call(caller, read)
        signals = [
            {
                "kind": s.kind,
                "variant": s.variant,
                "quality": s.quality,
                "position": s.position,
                "value": SIGNAL_TYPES[s.kind].format(s.value)
                if s.kind in SIGNAL_TYPES and not SIGNAL_TYPES[s.kind].opaque
                else f"{len(s.value)} bytes",
            }
            for s in entry.signals[:200]
        ]
        return web.render(
            request,
            "entry.html",
            caller,
            set_name=name,
            entry=entry,
            signals=signals,
            more_signals=max(0, len(entry.signals) - len(signals)),
            flood=flood,
            may_remove=caller.may("Curation/RemoveEntry") and entry.removed_at is None,
            may_release=caller.may("Curation/ReleaseEntry") and bool(flood),
        )

    async def remove_entry(request: Request):
        caller = await web.require(request, "Curation/RemoveEntry")
        await web.small_form(request, caller)
        name, entry_name = request.path_params["name"], request.path_params["entry"]

        def remove():
            entry = curation.remove_entry(name, entry_name)
            record(caller.name, "RemoveEntry", set=name, entry=entry.name, entry_id=entry.id)

        await web.call(caller, remove)
        return await web.redirect(request, f"/sets/{name}", caller, ("ok", f"{entry_name} removed"))

    async def release_entry(request: Request):
        caller = await web.require(request, "Curation/ReleaseEntry")
        await web.small_form(request, caller)
        name, entry_name = request.path_params["name"], request.path_params["entry"]
        await web.call(caller, web.core.review.release_entry, caller.name, name, entry_name)
        return await web.redirect(
            request, f"/sets/{name}/entries/{entry_name}", caller, ("ok", "flood alert released")
        )

    async def upload(request: Request):
        """Media files added as entries (one per file, named after it). The
        page's script sends one file per request and reads the JSON answer;
        without the script the form sends them all and gets a page."""
        caller = await web.require(request, UPLOAD_RPC)
        limits = web.limits
        form = await web.form(
            request, caller, limits.upload_max_bytes + 64 * 1024, limits.upload_max_files
        )
        name = request.path_params["name"]
        files = [f for f in form.getlist("files") if hasattr(f, "read")]
        if not files:
            raise Refused(400, "choose at least one file")
        labels = parse_labels(str(form.get("labels", "")))
        results = []
        for upload_file in files:
            results.append(await _add_one(caller, name, upload_file, labels))
        if request.headers.get("accept", "").startswith("application/json"):
            failed = [r for r in results if "error" in r]
            status = HTTP_STATUS.get(failed[0]["error"]["code"], 400) if failed else 200
            return JSONResponse({"results": results}, status_code=status)
        added = sum(1 for r in results if "entry" in r)
        errors = "; ".join(f"{r['file']}: {r['error']['message']}" for r in results if "error" in r)
        return await web.redirect(
            request,
            f"/sets/{name}",
            caller,
            (
                "error" if errors else "ok",
                f"{added} added" + (f"; failed: {errors}" if errors else ""),
            ),
        )

    async def _add_one(caller: Caller, set_name: str, upload_file, labels) -> dict:
        file_name = os.path.basename(upload_file.filename or "upload")
        try:
            data = await upload_file.read(web.limits.upload_max_bytes + 1)
            if len(data) > web.limits.upload_max_bytes:
                raise InvalidArgument(
                    f"larger than {web.limits.upload_max_bytes} bytes (console upload_max_bytes)"
                )

            def add():
                entry = curation.add_entry(
                    set_name, validation.entry_name(file_name), labels, caller.name, media=data
                )
                record(caller.name, "AddEntry", set=set_name, entry=entry.name, entry_id=entry.id)
                return entry

            entry = await web.call(caller, add)
            return {"file": file_name, "entry": entry.name, "media_type": entry.media_type}
        except HashsvcError as exc:
            return {"file": file_name, "error": {"code": status_name(exc), "message": str(exc)}}

    async def load(request: Request):
        caller = await web.require(request, "Curation/BulkLoad")
        form = await web.form(request, caller, web.limits.hash_list_max_bytes + 64 * 1024, 1)
        name = request.path_params["name"]
        upload_file = form.get("file")
        if not hasattr(upload_file, "read"):
            raise Refused(400, "choose a hash list file")
        fmt = str(form.get("format", "auto"))
        if fmt != "auto" and fmt not in loaders.FORMATS:
            raise InvalidArgument(f"format must be auto or one of {', '.join(loaders.FORMATS)}")
        await web.call(caller, curation.get_set, name)  # no such set: no job
        job = await web.call(
            caller,
            jobs.start,
            name,
            upload_file.file,
            os.path.basename(upload_file.filename or "upload"),
            fmt,
            form.get("strict") == "on",
            caller.name,
            caller.record.id,
        )
        return await web.redirect(request, f"/sets/{name}/loads/{job.id}")

    def _job(request: Request, caller: Caller):
        job = jobs.get(request.path_params["job"], caller.record.id)
        if job is None or job.set_name != request.path_params["name"]:
            raise Refused(404, "no such load (a load is shown to the token that started it)")
        return job

    async def load_page(request: Request):
        caller = await web.require(request, "Curation/BulkLoad")
        job = _job(request, caller)
        return web.render(request, "load.html", caller, job=job, progress=job.progress())

    async def load_progress(request: Request):
        caller = await web.require(request, "Curation/BulkLoad")
        return JSONResponse(_job(request, caller).progress())

    async def export(request: Request):
        caller = await web.require(request, "Curation/ExportEntries")
        name = request.path_params["name"]
        fmt = request.query_params.get("format", "csv")
        if fmt not in ("csv", "tsv", "jsonl", "hma", "tcap"):
            raise InvalidArgument("format must be csv, tsv, jsonl, hma or tcap")
        batches = await web.call(caller, web.core.export_entries, name)
        return StreamingResponse(
            iterate_in_threadpool(entry_rows(batches, fmt)),
            media_type="text/plain; charset=utf-8",
            headers={"content-disposition": f'attachment; filename="export.{fmt}"'},
        )

    return [
        Route("/sets", sets_page, methods=["GET"]),
        Route("/sets", create_set, methods=["POST"]),
        Route("/sets/{name}", set_page, methods=["GET"]),
        Route("/sets/{name}", update_set, methods=["POST"]),
        Route("/sets/{name}/upload", upload, methods=["POST"]),
        Route("/sets/{name}/load", load, methods=["POST"]),
        Route("/sets/{name}/loads/{job}", load_page, methods=["GET"]),
        Route("/sets/{name}/loads/{job}/progress", load_progress, methods=["GET"]),
        Route("/sets/{name}/export", export, methods=["GET"]),
        Route("/sets/{name}/entries/{entry:path}/remove", remove_entry, methods=["POST"]),
        Route("/sets/{name}/entries/{entry:path}/release", release_entry, methods=["POST"]),
        Route("/sets/{name}/entries/{entry:path}", entry_page, methods=["GET"]),
    ]


def _after(raw: str) -> int:
    return int(raw) if raw.isdigit() and len(raw) < 19 else 0
