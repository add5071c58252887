"""The Retro service (issue 20): retro-hunt runs by hand and their list, and
pruning the query signals a retro-hunt reads. Delegates to the core
(hashsvc/core/retro.py)."""

from __future__ import annotations

from hashsvc.api import convert
from hashsvc.api.calls import caller_name, rpc
from hashsvc.base import validation
from hashsvc.base.errors import InvalidArgument
from hashsvc.core.core import Core
from hashsvc.v1 import hashsvc_pb2 as pb
from hashsvc.v1 import hashsvc_pb2_grpc as pb_grpc


class RetroServicer(pb_grpc.RetroServicer):
    def __init__(self, core: Core) -> None:
        self.core = core
        self.retro = core.retro
        self.limits = core.config.strings

    def _info(self, run) -> pb.RetroRunInfo:
        hash_set = self.core.live.sets_by_id.get(run.set_id) if run.set_id else None
        return convert.retro_run(run, hash_set.name if hash_set else "")

    @rpc
    def StartRetroRun(self, request, context):
        run = self.core.start_retro_run(
            caller_name(), request.set, request.since_seconds, request.resume_run_id
        )
        return self._info(run)

    @rpc
    def ListRetroRuns(self, request, context):
        if request.id:
            return pb.ListRetroRunsResponse(runs=[self._info(self.retro.get_run(request.id))])
        after_id, limit = validation.page(request.page_size, request.page_token)
        runs = self.retro.list_runs(after_id, limit)
        token = str(runs[-1].id) if len(runs) == limit else ""
        return pb.ListRetroRunsResponse(runs=[self._info(r) for r in runs], next_page_token=token)

    @rpc
    def PruneHistory(self, request, context):
        before = convert.from_timestamp(request, "before")
        if before is None:
            raise InvalidArgument("PruneHistory needs `before`", field="before")
        pruned = self.core.prune_history(caller_name(), before)
        return pb.PruneHistoryResponse(records_pruned=pruned)
