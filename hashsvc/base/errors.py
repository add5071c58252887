"""Typed errors raised by the core. The gRPC layer maps each to one status code
(STATUS_FOR_ERROR, below) and its details (hashsvc/api/status.py); nothing below
it knows about gRPC."""


class HashsvcError(Exception):
    """Base class: the message is shown to the caller as is.

    Two optional fields hold what the message says in words, for a client that
    acts on an error without parsing text (the API sends them as
    google.rpc.BadRequest and ErrorInfo details, hashsvc/api/status.py):
    `field` is the path of the request field at fault ("page_size",
    "header.client_ref", "sets[2]"), `limit` the config key of the limit that
    was exceeded ("max_streams", "strings.client_ref_chars"). Plain strings, so
    that nothing below the API knows about protobuf."""

    def __init__(self, message: str = "", *, field: str = "", limit: str = "") -> None:
        super().__init__(message)
        self.field = field
        self.limit = limit


class InvalidArgument(HashsvcError):
    pass


class UnsupportedMedia(InvalidArgument):
    pass


class CorruptMedia(InvalidArgument):
    pass


class TooLarge(HashsvcError):
    """A configured limit (bytes, pixels, batch size) was exceeded."""


class NotFound(HashsvcError):
    pass


class AlreadyExists(HashsvcError):
    pass


class FailedPrecondition(HashsvcError):
    pass


class Unauthenticated(HashsvcError):
    pass


class PermissionDenied(HashsvcError):
    pass


class Unavailable(HashsvcError):
    pass


class Timeout(HashsvcError):
    """Work ran past its configured time limit and was stopped."""


# The one table from core errors to gRPC status code names (hashsvc/api turns
# the names into grpc.StatusCode; the history stores the name).
STATUS_FOR_ERROR: dict[type[HashsvcError], str] = {
    InvalidArgument: "INVALID_ARGUMENT",
    TooLarge: "RESOURCE_EXHAUSTED",
    NotFound: "NOT_FOUND",
    AlreadyExists: "ALREADY_EXISTS",
    FailedPrecondition: "FAILED_PRECONDITION",
    Unauthenticated: "UNAUTHENTICATED",
    PermissionDenied: "PERMISSION_DENIED",
    Unavailable: "UNAVAILABLE",
    Timeout: "DEADLINE_EXCEEDED",
}


def status_name(exc: BaseException) -> str:
    for cls in type(exc).__mro__:
        if cls in STATUS_FOR_ERROR:
            return STATUS_FOR_ERROR[cls]
    return "INTERNAL"


def quoted(text: object, limit: int = 80) -> str:
    """The caller's input as shown in an error message: repr, cut to `limit`
    characters, so a 100 KB name cannot make the status itself too large."""
    shown = repr(text)
    return (
        shown if len(shown) <= limit else shown[: limit - 5] + "...'" + f" ({len(str(text))} chars)"
    )
