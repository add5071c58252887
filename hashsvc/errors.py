"""Typed errors raised by the core. The gRPC layer maps each to one status code
(see hashsvc/service.py: STATUS_FOR_ERROR); nothing below it knows about gRPC."""


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
