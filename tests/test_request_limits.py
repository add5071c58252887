"""Bad input at the edge: paging fields, page tokens, and every string of every
request message (length and NUL) give INVALID_ARGUMENT on both stores, never
every row, INTERNAL or a value stored for good (issue 16, items 7, 8, 13)."""

from __future__ import annotations

import hashlib

import grpc
import pytest
from google.protobuf.descriptor import FieldDescriptor
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from hashsvc.core.config import StringLimits
from hashsvc.v1 import hashsvc_pb2 as pb
from loaders.records import RowError, parse_labels

LIMITS = StringLimits()
ROWS = 3  # entries, history records and review items made by the fixture


@pytest.fixture(scope="module")
def module_harness_url(module_store_url):
    return module_store_url  # both stores


@pytest.fixture(scope="module")
def module_harness(module_harness):
    """The module's server, with ROWS entries, history records and review items."""
    s, md = module_harness.stubs("admin")
    s.curation.CreateSet(pb.CreateSetRequest(name="known", review_blocks=True), metadata=md)
    for k in range(ROWS):
        digest = hashlib.md5(str(k).encode()).hexdigest()
        s.curation.AddEntry(
            pb.AddEntryRequest(
                set="known",
                name=f"e{k}",
                signal=pb.SignalValue(signal_type="md5", value=digest),
            ),
            metadata=md,
        )
        # BLOCK in a review_blocks set: a history record and a review item
        s.matcher.Match(
            pb.MatchRequest(signal=pb.SignalValue(signal_type="md5", value=digest)),
            metadata=md,
        )
    return module_harness


def _lists(s, md):
    """(name, call(page_size, page_token) -> (items, next token)) per paged RPC."""

    def entries(size, token):
        r = s.curation.ListEntries(
            pb.ListEntriesRequest(set="known", page_size=size, page_token=token), metadata=md
        )
        return list(r.entries), r.next_page_token

    def history(size, token):
        r = s.audit.QueryHistory(
            pb.QueryHistoryRequest(page_size=size, page_token=token), metadata=md
        )
        return list(r.records), r.next_page_token

    def review(size, token):
        r = s.review.ListReviewItems(
            pb.ListReviewItemsRequest(page_size=size, page_token=token), metadata=md
        )
        return list(r.items), r.next_page_token

    return {"ListEntries": entries, "QueryHistory": history, "ListReviewItems": review}


@pytest.mark.parametrize("rpc", ["ListEntries", "QueryHistory", "ListReviewItems"])
@pytest.mark.parametrize("size", [-1, -(2**31)])
def test_a_negative_page_size_is_invalid_argument(module_harness, rpc, size):
    """SQLite returned every row (LIMIT -1, past the 1,000 cap), PostgreSQL
    INTERNAL."""
    s, md = module_harness.stubs("admin")
    call = _lists(s, md)[rpc]
    with pytest.raises(grpc.RpcError) as err:
        call(size, "")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
    assert "page_size" in err.value.details()
    # pages of one still walk the whole list
    seen, token = [], ""
    for _ in range(20):
        items, token = call(1, token)
        seen += items
        if not token:
            break
    assert len(seen) >= ROWS


BAD_TOKENS = ["²", "١", "9" * 20, str(2**63), "-1", "1.5", " 1", "0x1", "1" * 5000, "1\x00"]


@pytest.mark.parametrize("rpc", ["ListEntries", "QueryHistory", "ListReviewItems"])
def test_an_odd_page_token_is_invalid_argument(module_harness, rpc):
    """'²' passed str.isdigit() and int() raised, '١' read as 1, a number past
    int64 was INTERNAL on PostgreSQL."""
    s, md = module_harness.stubs("admin")
    call = _lists(s, md)[rpc]
    for token in BAD_TOKENS:
        with pytest.raises(grpc.RpcError) as err:
            call(10, token)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (token, err.value.details())
    assert call(10, str(2**63 - 1)) == ([], "")  # the largest id: a valid, empty page


def _limit(field_name: str) -> int:
    if field_name == "client_ref":
        return LIMITS.client_ref_chars
    if field_name in ("description", "note"):
        return LIMITS.text_chars
    if field_name == "value":
        return LIMITS.signal_value_chars
    return LIMITS.other_chars


def _string_paths(descriptor, prefix=(), depth=0):
    """Every path to a string a request can carry: (field names..., kind) with
    kind 'scalar', 'repeated', 'map key' or 'map value'."""
    for fd in descriptor.fields:
        path = (*prefix, fd.name)
        if fd.type == FieldDescriptor.TYPE_MESSAGE:
            if fd.message_type.GetOptions().map_entry:
                yield path, "map key"
                if fd.message_type.fields_by_name["value"].type == FieldDescriptor.TYPE_STRING:
                    yield path, "map value"
            elif fd.message_type.full_name.startswith("hashsvc.") and depth < 3:
                if fd.message_type.name == "BulkRows":
                    yield (*path, "source"), "scalar"  # rows are checked row by row
                    continue
                yield from _string_paths(fd.message_type, path, depth + 1)
        elif fd.type == FieldDescriptor.TYPE_STRING:
            yield path, "repeated" if fd.is_repeated else "scalar"


def _request(method, path, kind, text):
    msg = pb.__dict__[method.input_type.name]()
    target = msg
    for name in path[:-1]:
        field = target.DESCRIPTOR.fields_by_name[name]
        target = getattr(target, name).add() if field.is_repeated else getattr(target, name)
    name = path[-1]
    if kind == "scalar":
        setattr(target, name, text)
    elif kind == "repeated":
        getattr(target, name).append(text)
    elif kind == "map key":
        getattr(target, name)[text] = "v"
    else:
        getattr(target, name)["k"] = text
    return msg


def _cases():
    for service in pb.DESCRIPTOR.services_by_name.values():
        for method in service.methods:
            for path, kind in _string_paths(method.input_type):
                yield pytest.param(method, path, kind, id=f"{method.name}:{'.'.join(path)}:{kind}")


def _call(module_harness, method, request):
    """Calls the RPC with the one request (the first message of a stream);
    returns the status, and for MatchBatch the item's error code, and the
    fields the status details name (google.rpc.BadRequest)."""
    s, md = module_harness.stubs("admin")
    ser, de = type(request).SerializeToString, pb.__dict__[method.output_type.name].FromString
    full = f"/{method.containing_service.full_name}/{method.name}"
    ch = s.channel
    messages = [request]
    if method.name == "BulkLoad" and request.WhichOneof("part") == "rows":
        messages.insert(0, pb.BulkLoadRequest(header=pb.BulkLoadHeader(set="known")))
    try:
        if method.client_streaming and method.server_streaming:
            answers = list(
                ch.stream_stream(full, ser, de)(iter([request]), metadata=md, timeout=30)
            )
            return answers[0].error_code, answers[0].error_message, None
        if method.client_streaming:
            ch.stream_unary(full, ser, de)(iter(messages), metadata=md, timeout=30)
        elif method.server_streaming:
            list(ch.unary_stream(full, ser, de)(request, metadata=md, timeout=30))
        else:
            ch.unary_unary(full, ser, de)(request, metadata=md, timeout=30)
    except grpc.RpcError as exc:
        return exc.code(), exc.details(), _bad_request_fields(exc)
    return grpc.StatusCode.OK, "", None


def _bad_request_fields(exc: grpc.RpcError) -> list[str]:
    found = rpc_status.from_call(exc)
    fields = []
    for detail in found.details if found is not None else ():
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            fields += [v.field for v in bad.field_violations]
    return fields


def _field_path(method, path, kind) -> str:
    """The BadRequest field of the string _request put at `path`: a repeated
    field's first item is [0]; a map is named whole (keys and values)."""
    parts, message = [], method.input_type
    for name in path[:-1]:
        field = message.fields_by_name[name]
        parts.append(f"{name}[0]" if field.is_repeated else name)
        message = field.message_type
    parts.append(f"{path[-1]}[0]" if kind == "repeated" else path[-1])
    return ".".join(parts)


@pytest.mark.parametrize(("method", "path", "kind"), list(_cases()))
def test_every_request_string_is_bounded_and_free_of_nul(module_harness, method, path, kind):
    """A 15 MiB client_ref stayed in the history and review queue for good
    and made their pages fail; NUL was INTERNAL on PostgreSQL. Every string
    field of every request message (found from the proto, so a field added
    later is covered) is refused at the edge."""
    limit = LIMITS.other_chars if kind.startswith("map") else _limit(path[-1])
    for text, words in (("x" * (limit + 1), "longer than"), ("a\x00b", "NUL")):
        code, details, fields = _call(module_harness, method, _request(method, path, kind, text))
        if method.name == "MatchBatch":  # the item's error; the stream goes on
            code = grpc.StatusCode[code]
        assert code == grpc.StatusCode.INVALID_ARGUMENT, (path, words, code, details)
        assert words in details, details
        if fields is not None:  # the status details name the field (issue 17)
            assert fields == [_field_path(method, path, kind)], (fields, details)


def test_strings_within_their_limit_are_kept_whole(module_harness):
    s, md = module_harness.stubs("admin")
    ref = "r" * LIMITS.client_ref_chars
    digest = hashlib.md5(b"0").hexdigest()
    answer = s.matcher.Match(
        pb.MatchRequest(signal=pb.SignalValue(signal_type="md5", value=digest), client_ref=ref),
        metadata=md,
    )
    assert answer.client_ref == ref and answer.decision == pb.BLOCK
    records = s.audit.QueryHistory(pb.QueryHistoryRequest(page_size=1000), metadata=md).records
    assert any(r.client_ref == ref for r in records)


def test_too_many_items_in_a_repeated_field_is_invalid_argument(module_harness):
    s, md = module_harness.stubs("admin")
    sets = [f"s{k}" for k in range(LIMITS.repeated_items + 1)]
    with pytest.raises(grpc.RpcError) as err:
        s.matcher.Match(
            pb.MatchRequest(signal=pb.SignalValue(signal_type="md5", value="0" * 32), sets=sets),
            metadata=md,
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "sets holds" in err.value.details()


def test_bad_bulk_rows_are_rejected_rows_and_the_load_goes_on(module_harness):
    """Deeply nested labels JSON raised RecursionError and aborted a load that
    is not strict; a huge signal type or variant was repeated whole in each
    rejection of the answer."""
    s, md = module_harness.stubs("admin")
    s.curation.CreateSet(pb.CreateSetRequest(name="bulkbad"), metadata=md)
    good = [hashlib.sha256(b"g1").digest(), hashlib.sha256(b"g2").digest()]
    rows = pb.BulkRows(
        signal_type=["sha256", "sha256", "x" * 1_000_000, "sha256", "sha256", "sha256"],
        value=[good[0], good[1], good[1], bytes(32), bytes(32), bytes(32)],
        line=[1, 2, 3, 4, 5, 6],
        entry=["a", "b", "c", "d\x00", "e", "f"],
        labels=["", "", "", "", '{"k": ' + "[" * 20_000, ""],
        variant=["", "", "", "", "", "v" * 1_000_000],
        source="rows.csv",
    )
    answer = s.curation.BulkLoad(
        iter(
            [
                pb.BulkLoadRequest(header=pb.BulkLoadHeader(set="bulkbad")),
                pb.BulkLoadRequest(rows=rows),
                pb.BulkLoadRequest(end=pb.BulkLoadEnd(rows=6)),
            ]
        ),
        metadata=md,
        timeout=30,
    )
    assert (answer.added, answer.rejected_count) == (2, 4)
    assert sorted(r.line for r in answer.rejected) == [3, 4, 5, 6]
    assert all(len(r.reason) < 300 for r in answer.rejected), [r.reason for r in answer.rejected]
    assert "nested" in next(r.reason for r in answer.rejected if r.line == 5)


def test_a_load_file_with_deeply_nested_labels_is_a_row_error():
    with pytest.raises(RowError, match="nested"):
        parse_labels('{"k": ' + "[" * 20_000)
    with pytest.raises(RowError, match="longer than"):
        parse_labels('{"k": "' + "v" * 100_000 + '"}')


def test_a_batch_item_with_an_oversized_string_fails_alone(module_harness):
    """The item's error does not echo its 1 MB client_ref (past a client's
    4 MiB receive limit at four such items), and the next item is answered."""
    s, md = module_harness.stubs("admin")
    digest = hashlib.md5(b"1").hexdigest()
    items = [
        pb.MatchRequest(
            signal=pb.SignalValue(signal_type="md5", value=digest), client_ref="x" * 1_000_000
        )
        for _ in range(5)
    ]
    items.append(
        pb.MatchRequest(signal=pb.SignalValue(signal_type="md5", value=digest), client_ref="ok")
    )
    answers = list(s.matcher.MatchBatch(iter(items), metadata=md, timeout=30))
    assert [a.error_code for a in answers[:5]] == ["INVALID_ARGUMENT"] * 5
    assert all(a.client_ref == "" for a in answers[:5])
    assert answers[5].client_ref == "ok" and answers[5].decision == pb.BLOCK
