"""Local HTTP servers that speak NCMEC's hash-sharing API and StopNCII's,
as python-threatexchange 1.2.17's clients call them (exchanges/clients/
ncmec/hash_api.py, stopncii/api.py), for tests:

- NcmecServer: GET <base>/v2/entries?from=<time>&to=<time> with HTTP basic
  auth -> an XML queryResult of <images> and <videos> (each with
  maxTimestamp; <image>, <deletedImage>, ... with id, member, timestamp,
  classification, fingerprints) and <paging><next>, the next page's path
  relative to <base> (start, size, max in its query). Times are
  yyyy-MM-ddTHH:mm:ssZ as the client writes them (its local clock's).
- StopNciiServer: GET <base>/FetchHashes?startTimestamp=&pageSize=
  [&nextPageToken=] with x-functions-key and Ocp-Apim-Subscription-Key ->
  {count, nextPageToken, nextSetTimestamp, hasMoreRecords, hashRecords}, a
  record being the whole current state of one hash (a withdrawn case too).

Both can answer an error status, hang, and count requests (exchange_servers._Server).
"""

from __future__ import annotations

import base64
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from datetime import datetime
from http.server import BaseHTTPRequestHandler
from urllib.parse import parse_qsl, urlencode, urlsplit

from hashsvc_testing.exchange_servers import _Server, send_body

NCMEC_NAMESPACE = "https://hashsharing.ncmec.org/hashsharing/v2"
_NCMEC_TIME = "%Y-%m-%dT%H:%M:%SZ"
# The NCMEC client never asks for the last 5 s (its entries are not in time
# order): a change is stamped this far back to be in the next fetch.
NCMEC_VISIBLE_AFTER = 6


def _ncmec_time(timestamp: float) -> str:
    return datetime.fromtimestamp(int(timestamp)).strftime(_NCMEC_TIME)


def _parse_ncmec_time(text: str) -> int:
    return int(datetime.strptime(text, _NCMEC_TIME).timestamp())


@dataclass
class NcmecEntry:
    id: str
    fingerprints: dict[str, str]
    member_id: int = 7
    kind: str = "image"  # or "video"
    classification: str = "A1"
    deleted: bool = False
    timestamp: int = 0


class NcmecServer(_Server):
    def __init__(self, user: str = "esp-user", password: str = "esp-pass", page_size=2) -> None:
        self.user, self.password = user, password
        self.page_size = page_size
        self.entries: dict[str, NcmecEntry] = {}
        self.entry_requests = 0
        self.fail_later_pages = 0  # this many requests for a range's 2nd+ page answer 500
        super().__init__()

    @property
    def base_url(self) -> str:
        return self.url.rstrip("/") + "/hashsharing"

    def add(self, entry_id: str, fingerprints: dict[str, str], **kw) -> NcmecEntry:
        kw.setdefault("timestamp", int(time.time()) - NCMEC_VISIBLE_AFTER)
        with self.lock:
            entry = NcmecEntry(entry_id, fingerprints, **kw)
            self.entries[entry_id] = entry
            return entry

    def delete(self, entry_id: str) -> None:
        old = self.entries[entry_id]
        self.add(entry_id, {}, member_id=old.member_id, kind=old.kind, deleted=True)

    def _handle(self, handler: BaseHTTPRequestHandler, method: str) -> None:
        with self.lock:
            self.requests += 1
        if self.hang_seconds:
            self.stop_event.wait(self.hang_seconds)
        if self.fail_status:
            return _send_xml(handler, self.fail_status, ET.Element("error"))
        expected = base64.b64encode(f"{self.user}:{self.password}".encode()).decode()
        if handler.headers.get("Authorization", "") != f"Basic {expected}":
            return _send_xml(handler, 401, ET.Element("error"))
        parsed = urlsplit(handler.path)
        if method != "GET" or parsed.path != "/hashsharing/v2/entries":
            return _send_xml(handler, 404, ET.Element("error"))
        query = dict(parse_qsl(parsed.query))
        with self.lock:
            self.entry_requests += 1
            if self.fail_later_pages and int(query.get("start") or 0) > 0:
                self.fail_later_pages -= 1
                return _send_xml(handler, 500, ET.Element("error"))
            answer = self._entries(query)
        _send_xml(handler, 200, answer)

    def _entries(self, query: dict) -> ET.Element:
        start_ts, end_ts = _parse_ncmec_time(query["from"]), _parse_ncmec_time(query["to"])
        in_range = sorted(
            (e for e in self.entries.values() if start_ts <= e.timestamp <= end_ts),
            key=lambda e: (e.timestamp, e.id),
        )
        first = int(query.get("start") or 0)
        size = int(query.get("size") or self.page_size)
        page = in_range[first : first + size]
        root = ET.Element("queryResult", xmlns=NCMEC_NAMESPACE)
        for kind in ("image", "video"):
            of_kind = [e for e in page if e.kind == kind]
            if not of_kind:
                continue
            group = ET.SubElement(
                root,
                f"{kind}s",
                count=str(len(of_kind)),
                maxTimestamp=_ncmec_time(max(e.timestamp for e in of_kind)),
            )
            for entry in of_kind:
                tag = f"deleted{kind.capitalize()}" if entry.deleted else kind
                element = ET.SubElement(group, tag)
                ET.SubElement(element, "id").text = entry.id
                ET.SubElement(element, "member", id=str(entry.member_id)).text = "An ESP"
                ET.SubElement(element, "timestamp").text = _ncmec_time(entry.timestamp)
                if not entry.deleted:
                    ET.SubElement(element, "classification").text = entry.classification
                    prints = ET.SubElement(element, "fingerprints")
                    for name, value in entry.fingerprints.items():
                        ET.SubElement(prints, name).text = value
        if first + size < len(in_range):
            paging = ET.SubElement(root, "paging")
            next_query = urlencode(
                {
                    "from": query["from"],
                    "to": query["to"],
                    "start": first + size,
                    "size": size,
                    "max": len(in_range),
                }
            )
            ET.SubElement(paging, "next").text = f"/v2/entries?{next_query}"
        return root


def _send_xml(handler: BaseHTTPRequestHandler, status: int, root: ET.Element) -> None:
    data = ET.tostring(root, xml_declaration=True, encoding="utf-8")
    send_body(handler, status, "application/xml", data)


@dataclass
class StopNciiRecord:
    hash_value: str
    signal_type: str = "ImagePDQ"
    status: str = "Active"
    case_numbers: dict[str, str] = field(default_factory=dict)
    modified: int = 0


class StopNciiServer(_Server):
    def __init__(
        self, fetch_key: str = "fetch-key", subscription_key: str = "sub-key", page_size=2
    ) -> None:
        self.fetch_key, self.subscription_key = fetch_key, subscription_key
        self.page_size = page_size
        self.records: dict[tuple[str, str], StopNciiRecord] = {}
        self._clock = 1_700_000_000
        self.fetch_requests = 0
        super().__init__()

    @property
    def base_url(self) -> str:
        return self.url.rstrip("/") + "/v1"

    def add(self, hash_value: str, **kw) -> StopNciiRecord:
        with self.lock:
            self._clock += 1
            record = StopNciiRecord(hash_value, modified=self._clock, **kw)
            record.case_numbers = record.case_numbers or {f"case-{self._clock}": record.status}
            self.records[(record.signal_type, hash_value)] = record
            return record

    def withdraw(self, hash_value: str, signal_type: str = "ImagePDQ") -> None:
        self.add(hash_value, signal_type=signal_type, status="Withdrawn")

    def route(self, method, path, query, form, headers):
        if (
            headers.get("x-functions-key") != self.fetch_key
            or headers.get("Ocp-Apim-Subscription-Key") != self.subscription_key
        ):
            return 401, {"statusCode": 401, "message": "Access denied: invalid key."}
        if method != "GET" or path != "/v1/FetchHashes":
            return 404, {"message": "not found"}
        with self.lock:
            self.fetch_requests += 1
            start = int(query.get("startTimestamp") or 0)
            rows = sorted(
                (r for r in self.records.values() if r.modified >= start),
                key=lambda r: (r.modified, r.hash_value),
            )
            offset = int(query.get("nextPageToken") or 0)
            size = int(query.get("pageSize") or self.page_size)
            size = min(size, self.page_size)
            page = rows[offset : offset + size]
            more = offset + size < len(rows)
            return 200, {
                "count": len(page),
                "nextPageToken": str(offset + size) if more else None,
                "nextSetTimestamp": (rows[-1].modified + 1) if rows else start,
                "hasMoreRecords": more,
                "hashRecords": [
                    {
                        "lastModtimestamp": r.modified,
                        "signalType": r.signal_type,
                        "hashValue": r.hash_value,
                        "hashStatus": r.status,
                        "caseNumbers": r.case_numbers,
                        "CSPFeedbacks": [],
                    }
                    for r in page
                ],
            }
