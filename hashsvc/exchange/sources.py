"""One small adapter per exchange API, wrapping python-threatexchange's
clients (pinned: its SignalExchangeAPI interfaces change between minor
versions). Each turns the API's fetch deltas (a checkpoint and updates keyed
by the source's item, with metadata or None for a deletion) into SourceItems:
the item's key, the hashsvc signals it carries, its labels and source id.

Credentials are parsed with the library's own CredentialHelper._from_str and
always handed to for_collab, so the library never looks in the environment
or in ~/.txtoken and the like. Every HTTP call has the feed's timeout: the
ThreatExchange client calls requests without one (a hanging server hung the
fetch for ever).
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import functools
import json
import logging
import os
import re
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from threatexchange.exchanges.clients.fb_threatexchange.api import ThreatExchangeAPI
from threatexchange.exchanges.clients.techagainstterrorism.api import TATHashListAPI
from threatexchange.exchanges.impl.fb_threatexchange_api import (
    FBThreatExchangeCheckpoint,
    FBThreatExchangeCollabConfig,
    FBThreatExchangeCredentials,
    FBThreatExchangeSignalExchangeAPI,
)
from threatexchange.exchanges.impl.file_api import (
    FileCollaborationConfig,
    LocalFileSignalExchangeAPI,
)
from urllib3.util.retry import Retry

from hashsvc.base.errors import InvalidArgument, Unavailable
from loaders.hma import tags_to_labels

APIS = ("threatexchange", "tcap", "ncmec", "stopncii", "file")
# Source signal type names (python-threatexchange's SignalType names,
# ThreatExchange threat types, TCAP algorithms) -> hashsvc's. Anything else
# is a type hashsvc does not keep: counted and skipped.
_KINDS = {
    "pdq": "pdq",
    "video_md5": "md5",
    "md5": "md5",
    "sha256": "sha256",
    "sha512": "sha512",
    "hash_pdq": "pdq",
    "hash_md5": "md5",
    "hash_video_md5": "md5",
    "hash_sha256": "sha256",
    "hash_sha512": "sha512",
}
# ThreatExchange reactions for a reviewer's verdict on a descriptor.
TE_REACTIONS = {"confirmed": "SAW_THIS_TOO", "false_positive": "DISAGREE_WITH_TAGS"}
# TCAP's ideology and file type become these labels
TCAP_LABELS = ("tcap_ideology", "tcap_file_type")


_SECRET_PARAM = re.compile(r"(access_token=)[^&\s'\"]+")


def redact(text: str) -> str:
    """A URL's access token (ThreatExchange sends it in the query) blanked."""
    return _SECRET_PARAM.sub(r"\1***", text)


class _RedactTokens(logging.Filter):
    """urllib3 logs each request and retry with its URL, query and all."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "access_token=" in message:
            record.msg, record.args = redact(message), ()
        return True


for _logger in ("urllib3.connectionpool", "urllib3.util.retry"):
    logging.getLogger(_logger).addFilter(_RedactTokens())


class FeedbackUnsupported(Exception):
    """The API takes no feedback of this kind."""


class ResponseTooLarge(Unavailable):
    """A partner's answer past exchange.max_response_bytes: the fetch fails
    (the pages before it stay committed, and the checkpoint with them)."""


@dataclass(slots=True)
class SourceItem:
    key: str  # the source's item: "type:value" (or its own id)
    signals: list[tuple[str, str]] = field(default_factory=list)  # (hashsvc kind, hex)
    labels: dict[str, str] = field(default_factory=dict)
    source_id: str = ""
    deleted: bool = False
    skipped: int = 0  # signals of types hashsvc does not keep


@dataclass
class SourcePage:
    items: list[SourceItem]
    checkpoint: str | None  # JSON text to store once the page is written


@dataclass(frozen=True)
class SourceConfig:
    """What a feed tells its adapter (options as given to `exchange add`)."""

    name: str
    options: dict[str, str]
    credentials: str | None
    timeout_seconds: float
    retries: int
    # bytes read from one HTTP answer at most (exchange.max_response_bytes)
    max_response_bytes: int = 64 << 20
    # bytes a file feed's list may have (exchange.max_file_bytes)
    max_file_bytes: int = 256 << 20


class Source:
    snapshot = False  # every fetch returns the whole list (missing = deleted)

    def pages(self, checkpoint: str | None) -> Iterator[SourcePage]:
        raise NotImplementedError

    def send_feedback(self, item_key: str, source_id: str, verdict: str) -> None:
        raise FeedbackUnsupported(f"{type(self).__name__} takes no feedback")

    def stale(self, checkpoint: str | None) -> bool:
        """True when the API no longer keeps the deletions since checkpoint:
        the feed must be listed whole again."""
        return False


def kind_of(source_type: str) -> str | None:
    return _KINDS.get(source_type.strip().lower())


def item_key(source_type: str, value: str) -> str:
    return f"{source_type.strip().lower()}:{value.strip().lower()}"


def _timeout_adapter(cfg: SourceConfig) -> HTTPAdapter:
    # requests' adapter with the feed's timeout on every call; retries only
    # for idempotent calls, as the library's own sessions
    adapter = HTTPAdapter(
        max_retries=Retry(
            total=cfg.retries,
            status_forcelist=[429, 500, 502, 503, 504],
            allowed_methods=["HEAD", "GET", "OPTIONS"],
            backoff_factor=0.2,
        )
    )
    send = adapter.send

    def send_bounded(request, **kwargs):
        kwargs["timeout"] = cfg.timeout_seconds
        kwargs["stream"] = True  # the body is read here, within the limit
        response = send(request, **kwargs)
        _read_bounded(response, cfg.max_response_bytes)
        return response

    adapter.send = send_bounded
    return adapter


def _read_bounded(response: requests.Response, limit: int) -> None:
    """The answer's body read into the response (as requests would), but
    never past `limit` bytes once decoded: a partner (or whoever answers
    in its place) sending an endless or gigabyte page would hold it all in
    the server's memory. Content-Length is checked first; a body without
    one (chunked, or the connection closed at its end) is cut at the limit."""
    where = response.url.split("?", 1)[0]  # ThreatExchange puts its token in the query
    too_large = ResponseTooLarge(
        f"the answer from {where} is larger than {limit} bytes"
        " (exchange.max_response_bytes): the fetch stops, the checkpoint stays"
    )
    declared = response.headers.get("Content-Length", "")
    try:
        if declared.isdigit() and int(declared) > limit:
            raise too_large
        body = response.raw.read(limit + 1, decode_content=True) or b""
        if len(body) > limit:
            raise too_large
        # the rest (none) so urllib3 sees the end and reuses the connection
        while chunk := response.raw.read(65536, decode_content=True):
            body += chunk
            if len(body) > limit:
                raise too_large
    except BaseException:
        response.close()
        raise
    response._content = body
    response._content_consumed = True
    response.raw.release_conn()


def _bound_every_url(session: requests.Session, cfg: SourceConfig, base_url: str) -> None:
    """Our adapter for the library's base URL (replacing its own 60 s one) and
    for every other URL: a partner's redirect elsewhere is read within the
    same size limit and timeout."""
    adapter = _timeout_adapter(cfg)
    for prefix in ("http://", "https://", base_url):
        session.mount(prefix, adapter)


def _session(cfg: SourceConfig) -> requests.Session:
    session = requests.Session()
    adapter = _timeout_adapter(cfg)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


def _checkpoint_json(checkpoint: Any) -> str:
    return json.dumps(dataclasses.asdict(checkpoint), sort_keys=True)


def _credentials(helper: type, cfg: SourceConfig, what: str):
    """The library's parser; errors never quote the secret."""
    if not cfg.credentials:
        raise InvalidArgument(f"feed {cfg.name!r} needs credentials ({what})")
    try:
        creds = helper._from_str(cfg.credentials)
    except ValueError:
        creds = None
    if creds is None or not creds._are_valid():
        raise InvalidArgument(f"the credentials of feed {cfg.name!r} are not {what}")
    return creds


# -- ThreatExchange (GIFCT's hash-sharing database)


class _TimedThreatExchangeAPI(ThreatExchangeAPI):
    """The library's client with the feed's timeout: its GETs call
    requests.get without one, and its session with a fixed 60 s."""

    def __init__(self, token: str, base_url: str, cfg: SourceConfig) -> None:
        super().__init__(token, endpoint_override=base_url or None)
        self._cfg = cfg

    def _get_session(self):
        return _session(self._cfg)

    def get_json_from_url(self, url, params=None, *, json_obj_hook=None):
        with self._get_session() as session:
            response = session.get(url, params=params or {})
            response.raise_for_status()
            return response.json(object_hook=json_obj_hook)


class ThreatExchangeSource(Source):
    def __init__(self, cfg: SourceConfig) -> None:
        creds = _credentials(FBThreatExchangeCredentials, cfg, "an app token (APPID|SECRET)")
        group = cfg.options.get("privacy_group", "")
        if not group.isdigit():
            raise InvalidArgument("a threatexchange feed needs --privacy-group ID (digits)")
        # the library joins "BASE/GROUP/threat_updates/": no trailing slash
        base_url = cfg.options.get("base_url", "").rstrip("/")
        self.client = _TimedThreatExchangeAPI(creds.api_token, base_url, cfg)
        collab = FBThreatExchangeCollabConfig(name=cfg.name, privacy_group=int(group))
        self.api = FBThreatExchangeSignalExchangeAPI(self.client, collab)

    def stale(self, checkpoint: str | None) -> bool:
        # ThreatExchange keeps deletion records for 90 days (the library's
        # is_stale says 85): after that, what was deleted meanwhile shows
        # only as missing from a fetch from the start
        return bool(checkpoint) and FBThreatExchangeCheckpoint(**json.loads(checkpoint)).is_stale()

    def pages(self, checkpoint: str | None) -> Iterator[SourcePage]:
        start = FBThreatExchangeCheckpoint(**json.loads(checkpoint)) if checkpoint else None
        for delta in self.api.fetch_iter((), start):
            items = []
            for (threat_type, indicator), record in delta.updates.items():
                items.append(_te_item(threat_type, indicator, record))
            yield SourcePage(items, _checkpoint_json(delta.checkpoint))

    def send_feedback(self, item_key: str, source_id: str, verdict: str) -> None:
        reaction = TE_REACTIONS.get(verdict)
        if reaction is None or not source_id:
            raise FeedbackUnsupported(f"no ThreatExchange reaction for {verdict!r}")
        for descriptor in source_id.split(","):
            _, _, answer = self.client.react_to_threat_descriptor(int(descriptor), reaction)
            if not (isinstance(answer, dict) and answer.get("success")):
                raise Unavailable(f"ThreatExchange did not take the reaction: {answer!r:.200}")


def _te_item(threat_type: str, indicator: str, record) -> SourceItem:
    item = SourceItem(item_key(threat_type, indicator))
    if record is None:
        item.deleted = True
        return item
    kind = kind_of(threat_type)
    if kind is None:
        item.skipped = 1
        return item
    item.signals.append((kind, indicator.lower()))
    tags = sorted({tag for opinion in record.opinions for tag in opinion.tags})
    # GIFCT's categories travel as `key:value` tags (entity, content type,
    # behaviour): labels of their own, like the HMA file loader reads them
    item.labels = tags_to_labels(" ".join(tags))
    descriptors = sorted(
        o.descriptor_id
        for o in record.opinions
        if o.descriptor_id is not None and o.descriptor_id >= 0
    )
    item.source_id = ",".join(str(d) for d in descriptors)
    return item


# -- Tech Against Terrorism's TCAP hash list


class _TimedTATHashListAPI(TATHashListAPI):
    """The library's client with the feed's timeout and size limit, one
    session (its connections kept) and one login for the fetch: the library
    logs in again and opens a new session, and a TCP connection, for every
    page (100 logins and 200 connections for 1M hashes)."""

    def __init__(self, username: str, password: str, base_url: str, cfg: SourceConfig) -> None:
        super().__init__(username, password)
        if base_url:
            self.BASE_URL = base_url.rstrip("/") + "/"
        self._cfg = cfg
        self._shared: requests.Session | None = None
        self._token: str | None = None

    @contextlib.contextmanager
    def _get_session(self, auth_token=None):
        if self._shared is None:
            self._shared = _session(self._cfg)
        session = self._shared
        session.headers.pop("Authorization", None)
        if auth_token:
            session.headers["Authorization"] = f"Bearer {auth_token}"
        yield session

    def get_auth_token(self, username: str, password: str) -> str | None:
        if self._token is None:
            self._token = super().get_auth_token(username, password)
        return self._token

    def fetch_hashes(self, next_page=None, order="asc", after=""):
        """The library's page; a 401 (the fetch's one token expired on a
        long fetch) logs in again and asks for that page once more. Nothing
        of the page was yielded yet, so asking again loses and repeats nothing;
        a second 401 fails the fetch (credentials revoked, not expired)."""
        try:
            return super().fetch_hashes(next_page, order, after)
        except requests.HTTPError as exc:
            if exc.response is None or exc.response.status_code != 401 or self._token is None:
                raise
        self._token = None
        return super().fetch_hashes(next_page, order, after)

    def close(self) -> None:
        if self._shared is not None:
            self._shared.close()
            self._shared = None


class TcapSource(Source):
    """The client, not the library's TATSignalExchangeAPI: that one keeps only
    PDQ and video MD5 and drops each row's ideology and file type, which
    hashsvc keeps as labels (and SHA-256/512 for exact match)."""

    def __init__(self, cfg: SourceConfig) -> None:
        # USERNAME:PASSWORD, as the library's TATCredentials reads it; that
        # class's module imports the library's PDQ signal type, and with it
        # Pillow and pdqhash, which the server process never loads
        username, _, password = (cfg.credentials or "").strip().partition(":")
        if not (username and password):
            raise InvalidArgument(f"the credentials of feed {cfg.name!r} are not USERNAME:PASSWORD")
        self.client = _TimedTATHashListAPI(username, password, cfg.options.get("base_url", ""), cfg)

    def pages(self, checkpoint: str | None) -> Iterator[SourcePage]:
        after = json.loads(checkpoint)["checkpoint"] if checkpoint else ""
        try:
            for response in self.client.fetch_hashes_iter(after):
                items = [_tcap_item(entry) for entry in response.results]
                if response.checkpoint:
                    after = response.checkpoint
                yield SourcePage(items, json.dumps({"checkpoint": after}) if after else checkpoint)
        finally:
            self.client.close()


def _tcap_item(entry) -> SourceItem:
    algorithm, kind = _tcap_algorithm(str(entry.algorithm))
    digest = entry.hash_digest.strip().lower()
    key = f"{algorithm}:{digest}"
    if entry.deleted:
        return SourceItem(key, source_id=str(entry.id), deleted=True)
    if kind is None:
        return SourceItem(key, source_id=str(entry.id), skipped=1)
    ideology = getattr(entry.ideology, "value", entry.ideology)
    labels = _tcap_labels(ideology, entry.file_type)
    return SourceItem(key, [(kind, digest)], labels, str(entry.id))


@functools.lru_cache(maxsize=256)
def _tcap_algorithm(algorithm: str) -> tuple[str, str | None]:
    """A TCAP algorithm's name in item keys and its hashsvc kind (a list
    has a handful: each is worked out once, not once a row)."""
    return algorithm.strip().lower(), kind_of(algorithm)


@functools.lru_cache(maxsize=4096)
def _tcap_labels(ideology, file_type) -> dict[str, str]:
    """A row's TCAP labels: one dict for each ideology and file type, shared
    by the items that carry them (read, never changed, after this)."""
    return {
        label: str(value)
        for label, value in zip(TCAP_LABELS, (ideology, file_type), strict=True)
        if value
    }


# -- the local file exchange: a whole snapshot each fetch


class FileSource(Source):
    """The listing is opened once, here, and read within
    exchange.max_file_bytes; the library's parser gets those bytes, never
    the path: a check of the path and then the library's own open and
    readlines (which read it whole) left a window in which a bigger file, a
    FIFO (a read that never ends) or a link could be put in its place."""

    snapshot = True

    def __init__(self, cfg: SourceConfig) -> None:
        path = cfg.options.get("path", "")
        if not path:
            raise InvalidArgument("a file feed needs --path FILE")
        self.collab = FileCollaborationConfig(
            name=cfg.name, filename=path, signal_type=cfg.options.get("signal_type") or None
        )
        self.path = path  # resolved within exchange.file_dir by the caller
        self.max_bytes = cfg.max_file_bytes
        self.page_items = int(cfg.options.get("page_items", "50000"))

    def pages(self, checkpoint: str | None) -> Iterator[SourcePage]:
        listing = self._read_bounded()
        try:
            deltas = self._parse(listing)
        finally:
            os.close(listing)
        items = []
        for delta in deltas:
            for source_type, value in delta.updates:
                item = SourceItem(item_key(source_type, value), source_id="")
                kind = kind_of(source_type)
                if kind is None:
                    item.skipped = 1
                else:
                    item.signals.append((kind, value.strip().lower()))
                items.append(item)
        for start in range(0, max(len(items), 1), self.page_items):
            yield SourcePage(items[start : start + self.page_items], None)

    def _parse(self, listing: int) -> list:
        """The library's parser on what was read. Its fetch_iter takes only
        a path (collab.filename, which it opens and reads itself): it is
        given /proc/self/fd/N of the in-memory file holding the bytes read,
        so the parsing stays the library's and what it parses is what was
        checked, whatever is at the feed's path by then."""
        collab = dataclasses.replace(self.collab, filename=f"/proc/self/fd/{listing}")
        try:
            return list(LocalFileSignalExchangeAPI(collab).fetch_iter((), None))
        except (AssertionError, OSError, UnicodeDecodeError) as exc:
            raise Unavailable(f"cannot read the feed's file: {exc}") from None

    def _read_bounded(self) -> int:
        """The feed's file opened once (never through a link, never waiting
        on a FIFO's writer), checked on that descriptor (a regular file, at
        most exchange.max_file_bytes, still the path resolved within
        exchange.file_dir) and read within the limit into an in-memory
        file, whose descriptor is returned. A file that grows past the limit,
        or changes at all, while it is read is refused, not cut: a cut listing
        would delete what it no longer lists. Nothing is read on a refusal.
        (A file half-written when it is opened cannot be told apart: a
        producer writes a new listing to a temporary file and renames it.)"""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise Unavailable(
                    "the feed's file is a symbolic link (put in its place after its path was"
                    " checked): nothing read, nothing deleted"
                ) from None
            raise Unavailable(f"cannot read the feed's file: {exc}") from None
        listing = -1
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise Unavailable("the feed's file is not a regular file: nothing read")
            if info.st_size > self.max_bytes:
                raise self._too_large(info.st_size)
            # a directory on the way swapped for a link since the path was
            # resolved: what was opened is not the file within file_dir
            opened = os.readlink(f"/proc/self/fd/{fd}")
            if opened != self.path:
                raise Unavailable(
                    "the feed's file moved since its path was checked: nothing read, nothing"
                    " deleted"
                )
            listing = os.memfd_create("hashsvc-file-feed", os.MFD_CLOEXEC)
            total = 0
            while chunk := os.read(fd, min(1 << 20, self.max_bytes + 1 - total)):
                total += len(chunk)
                if total > self.max_bytes:
                    raise self._too_large(f"{total}+ (it grew while it was read)")
                view = memoryview(chunk)
                while view:
                    view = view[os.write(listing, view) :]
            # A file rewritten in place while it was read (a partner's
            # `curl -o`, a shell's `>`) reads short: a listing cut short
            # would delete every entry it no longer lists. What was read
            # must be the whole file as it was found, unchanged since.
            after = os.fstat(fd)
            same = (info.st_size, info.st_mtime_ns, info.st_ctime_ns, info.st_ino)
            if total != info.st_size or same != (
                after.st_size,
                after.st_mtime_ns,
                after.st_ctime_ns,
                after.st_ino,
            ):
                raise Unavailable(
                    "the feed's file changed while it was read (write a new listing to a"
                    " temporary file and rename it into place): nothing read, nothing deleted"
                )
            return listing
        except BaseException as exc:
            if listing >= 0:
                os.close(listing)
            if isinstance(exc, OSError):
                raise Unavailable(f"cannot read the feed's file: {exc}") from None
            raise
        finally:
            os.close(fd)

    def _too_large(self, size) -> Unavailable:
        return Unavailable(
            f"the feed's file is {size} bytes, more than {self.max_bytes}"
            " (exchange.max_file_bytes): nothing read, nothing deleted"
        )


# -- NCMEC and StopNCII


class NcmecSource(Source):
    """The library's NCMECSignalExchangeAPI (its fetch_iter narrows the time
    range until pages are few), keyed by NCMEC's member and entry id, each
    entry's fingerprints by type. Its client is the library's with the
    feed's timeout and base URL (the library's has a fixed 60 s and only
    NCMEC's own addresses). Imported when such a feed is used: the modules
    import the library's signal types, which load Pillow and pdqhash."""

    def __init__(self, cfg: SourceConfig) -> None:
        from threatexchange.exchanges.clients.ncmec.hash_api import (
            NCMECEnvironment,
            NCMECHashAPI,
        )
        from threatexchange.exchanges.impl.ncmec_api import (
            NCMECCheckpoint,
            NCMECCollabConfig,
            NCMECCredentials,
            NCMECSignalExchangeAPI,
        )

        env_name = cfg.options.get("environment", "Industry")
        try:
            env = NCMECEnvironment[env_name]
        except KeyError:
            raise InvalidArgument(f"unknown NCMEC environment {env_name!r}") from None
        creds = _credentials(NCMECCredentials, cfg, "USER:PASSWORD")
        base_url = cfg.options.get("base_url", "").rstrip("/")

        class TimedClient(NCMECHashAPI):
            def __init__(self, username, password, environment) -> None:
                super().__init__(username, password, environment)
                if base_url:  # it joins "BASE/v2/entries" and "BASE" + next page's path
                    self._base_url = base_url

            def _get_session(self):
                session = super()._get_session()  # its basic auth, and a 60 s adapter
                _bound_every_url(session, cfg, self._base_url)
                return session

        class TimedExchange(NCMECSignalExchangeAPI):
            def get_client(self, environment):
                return TimedClient(self._username, self._password, environment)

        self.checkpoint_cls = NCMECCheckpoint
        collab = NCMECCollabConfig(name=cfg.name, environment=env)
        self.api = TimedExchange(collab, creds.user, creds.password)

    def pages(self, checkpoint: str | None) -> Iterator[SourcePage]:
        from threatexchange.exchanges.impl.ncmec_api import _NCMECPagingInfo

        start = None
        if checkpoint:
            fields = json.loads(checkpoint)
            paging = fields.pop("paging_info", None)
            # asdict() flattened the paging info (a resume mid-range): rebuilt,
            # or the library reads attributes of a dict
            start = self.checkpoint_cls(
                **fields, paging_info=_NCMECPagingInfo(**paging) if paging else None
            )
        for delta in self.api.fetch_iter((), start):
            items = [_library_item(key, value) for key, value in delta.updates.items()]
            yield SourcePage(items, _checkpoint_json(delta.checkpoint))


# StopNCII's signal types -> the names its library gives them (item keys)
_STOPNCII_TYPES = {"ImagePDQ": "pdq", "VideoMD5": "video_md5", "URL": "url", "Text": "raw_text"}
# A case withdrawn or deleted by the person who submitted it: the hash goes
_STOPNCII_GONE = ("Withdrawn", "Deleted")


class StopNciiSource(Source):
    """The library's StopNCII client, not its StopNCIISignalExchangeAPI: that
    one compares a record's hash value (not its status) with Withdrawn and
    Deleted, so a withdrawn case stayed an active hash. Records carry the
    whole current state of a hash: a withdrawn or deleted one is a deletion.
    The checkpoint (the library's: the next startTimestamp) moves only once
    a fetch has read every page; a fetch cut short starts that range again."""

    def __init__(self, cfg: SourceConfig) -> None:
        from threatexchange.exchanges.clients.stopncii.api import StopNCIIAPI
        from threatexchange.exchanges.impl.stop_ncii_api import (
            StopNCIICheckpoint,
            StopNCIICredentials,
        )

        creds = _credentials(StopNCIICredentials, cfg, "FETCH_KEY,SUBSCRIPTION_KEY")
        base_url = cfg.options.get("base_url", "").rstrip("/") or creds.base_url_override

        class TimedClient(StopNCIIAPI):
            def _get_session(self, endpoint):
                session = super()._get_session(endpoint)  # its keys, and a 60 s adapter
                _bound_every_url(session, cfg, self._base_url)
                return session

        self.checkpoint_cls = StopNCIICheckpoint
        self.client = TimedClient(
            creds.subscription_key, creds.fetch_function_key, base_url_override=base_url or None
        )

    def stale(self, checkpoint: str | None) -> bool:
        # the library's rule: 30 days without a fetch, list it whole again
        return bool(checkpoint) and self.checkpoint_cls(**json.loads(checkpoint)).is_stale()

    def pages(self, checkpoint: str | None) -> Iterator[SourcePage]:
        start = self.client.DEFAULT_START_TIME
        if checkpoint:
            start = json.loads(checkpoint)["update_time"]
        for response in self.client.fetch_hashes_iter(start_timestamp=start):
            items = [_stopncii_item(record) for record in response.hashRecords]
            done = not response.hasMoreRecords
            mark = None
            if done:
                mark = json.dumps(
                    {"update_time": response.nextSetTimestamp, "last_fetch_time": int(time.time())},
                    sort_keys=True,
                )
            yield SourcePage(items, mark if done else checkpoint)


def _stopncii_item(record) -> SourceItem:
    type_name = _STOPNCII_TYPES.get(record.signalType.value, record.signalType.value)
    item = SourceItem(item_key(type_name, record.hashValue))
    if record.hashStatus.value in _STOPNCII_GONE:
        item.deleted = True
        return item
    kind = kind_of(type_name)
    if kind is None:
        item.skipped = 1
        return item
    item.signals.append((kind, record.hashValue.strip().lower()))
    item.labels["stopncii_status"] = record.hashStatus.value
    return item


def _library_item(key, value) -> SourceItem:
    if isinstance(key, tuple):  # (signal type, value)
        item = SourceItem(item_key(*key))
        if value is None:
            item.deleted = True
        elif kind_of(key[0]) is None:
            item.skipped = 1
        else:
            item.signals.append((kind_of(key[0]), key[1].strip().lower()))
        return item
    item = SourceItem(f"id:{key}", source_id=str(key))  # NCMEC: an entry of fingerprints
    if value is None or getattr(value, "deleted", False):
        item.deleted = True
        return item
    for source_type, hex_value in getattr(value, "fingerprints", {}).items():
        kind = kind_of(source_type)
        if kind is None:
            item.skipped += 1
        else:
            item.signals.append((kind, hex_value.strip().lower()))
    classification = getattr(value, "classification", None)
    if classification:
        item.labels["ncmec_classification"] = str(classification)
    return item


def open_source(api: str, cfg: SourceConfig) -> Source:
    if api == "threatexchange":
        return ThreatExchangeSource(cfg)
    if api == "tcap":
        return TcapSource(cfg)
    if api == "file":
        return FileSource(cfg)
    if api == "ncmec":
        return NcmecSource(cfg)
    if api == "stopncii":
        return StopNciiSource(cfg)
    raise InvalidArgument(f"unknown exchange API {api!r} (known: {', '.join(APIS)})")
