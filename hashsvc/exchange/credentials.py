"""Feed credentials at rest. With exchange.credentials_key_file set they are
sealed with AES-GCM under a key derived from that file (kept outside the
database), bound to the feed's name, API and options: someone who can write
to the database can neither read a partner's token nor point its feed at
another server (a changed base_url no longer opens the credentials, and the
fetch fails closed). Without the key file they are kept as text in their own
table, which no answer reads."""

from __future__ import annotations

import hashlib
import json
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from hashsvc.base.errors import FailedPrecondition, InvalidArgument

_SEALED = b"aesgcm1:"
_PLAIN = b"plain:"
# a key file shorter than this is not a key
MIN_KEY_BYTES = 32


class CredentialBox:
    def __init__(self, key_file: str) -> None:
        self.key_file = key_file

    def _key(self) -> bytes | None:
        if not self.key_file:
            return None
        try:
            with open(self.key_file, "rb") as f:
                material = f.read()
        except OSError as exc:
            raise FailedPrecondition(
                f"cannot read exchange.credentials_key_file: {exc.strerror}"
            ) from None
        if len(material.strip()) < MIN_KEY_BYTES:
            raise FailedPrecondition(
                f"exchange.credentials_key_file holds fewer than {MIN_KEY_BYTES} bytes"
            )
        return hashlib.sha256(b"hashsvc feed credentials\0" + material.strip()).digest()

    def seal(self, text: str, name: str, api: str, options: dict[str, str]) -> bytes:
        key = self._key()
        if key is None:
            return _PLAIN + text.encode()
        nonce = os.urandom(12)
        return (
            _SEALED + nonce + AESGCM(key).encrypt(nonce, text.encode(), _bound(name, api, options))
        )

    def open(self, blob: bytes, name: str, api: str, options: dict[str, str]) -> str:
        if blob.startswith(_SEALED):
            key = self._key()
            if key is None:
                raise FailedPrecondition(
                    f"the credentials of feed {name!r} are sealed:"
                    " the server needs exchange.credentials_key_file"
                )
            body = blob[len(_SEALED) :]
            try:
                plain = AESGCM(key).decrypt(body[:12], body[12:], _bound(name, api, options))
            except InvalidTag:
                raise FailedPrecondition(
                    f"the credentials of feed {name!r} do not open: another key, or the feed's"
                    " settings were changed outside hashsvc"
                ) from None
            return plain.decode()
        if blob.startswith(_PLAIN):
            return blob[len(_PLAIN) :].decode()
        raise InvalidArgument(f"the credentials of feed {name!r} are in no known form")


def _bound(name: str, api: str, options: dict[str, str]) -> bytes:
    return json.dumps([name, api, options], sort_keys=True).encode()
