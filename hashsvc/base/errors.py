"""Typed errors raised by the core. The gRPC layer maps each to one status code
(see hashsvc/api/servicers.py: STATUS_FOR_ERROR); nothing below it knows about gRPC."""


class HashsvcError(Exception):
    """Base class: the message is shown to the caller as is."""


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


# The one table from core errors to gRPC status code names (service.py turns the
# names into grpc.StatusCode; the history stores the name).
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
