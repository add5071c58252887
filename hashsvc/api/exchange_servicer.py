"""The Exchange service: partner feeds (hashsvc/exchange/feeds.py does the
work; this unpacks requests and packs answers)."""

from __future__ import annotations

import queue
import threading

from hashsvc.api import convert
from hashsvc.api.calls import caller_name, rpc
from hashsvc.exchange.feeds import DEFAULT_EVERY_SECONDS, Feeds
from hashsvc.v1 import hashsvc_pb2 as pb
from hashsvc.v1 import hashsvc_pb2_grpc as pb_grpc


class ExchangeServicer(pb_grpc.ExchangeServicer):
    def __init__(self, feeds: Feeds) -> None:
        self.feeds = feeds
        self.limits = feeds.core.config.strings

    def _feed(self, record, feedback=()) -> pb.Feed:
        return convert.feed(record, self.feeds.set_name(record), feedback)

    @rpc
    def AddFeed(self, request, context):
        record = self.feeds.add(
            caller_name(),
            request.name,
            request.api,
            request.set,
            dict(request.labels),
            dict(request.options),
            request.every_seconds or DEFAULT_EVERY_SECONDS,
            request.credentials,
        )
        return self._feed(record)

    @rpc
    def ListFeeds(self, request, context):
        return pb.ListFeedsResponse(feeds=[self._feed(f) for f in self.feeds.list()])

    @rpc
    def GetFeed(self, request, context):
        record = self.feeds.get(request.name)
        return self._feed(record, self.feeds.feedback(request.name, request.entry or None))

    @rpc
    def SetFeedEnabled(self, request, context):
        return self._feed(self.feeds.set_enabled(caller_name(), request.name, request.enabled))

    @rpc
    def RemoveFeed(self, request, context):
        record = self.feeds.remove(caller_name(), request.name)
        return convert.feed(record, "")

    @rpc
    def FetchFeed(self, request, context):
        """The fetch runs in its own thread and reports each page here; a
        client that goes away does not stop it (it holds the feed's lease
        and finishes what it started)."""
        progress: queue.Queue = queue.Queue()
        outcome: list = []
        actor = caller_name()

        def fetch() -> None:
            try:
                outcome.append(
                    self.feeds.fetch(
                        request.name,
                        actor,
                        request.full,
                        lambda r: progress.put(convert.fetch_progress(r, False)),
                        request.allow_mass_delete,
                    )
                )
            except BaseException as exc:  # raised to the caller below
                outcome.append(exc)
            progress.put(None)

        threading.Thread(target=fetch, daemon=True, name="exchange-fetch").start()
        while (message := progress.get()) is not None:
            if context.is_active():
                yield message
        result = outcome[0]
        if isinstance(result, BaseException):
            raise result
        yield convert.fetch_progress(result, True)

    @rpc
    def SendFeedback(self, request, context):
        feedback_id = self.feeds.queue_feedback(
            caller_name(), request.feed, request.entry, request.verdict
        )
        items = [f for f in self.feeds.feedback(request.feed, request.entry) if f.id == feedback_id]
        return convert.feedback_item(items[0])
