"""Password hashing (argon2id) and signed tokens (JWT, HS256) for the API."""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jwt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from metrify.application.errors import AuthenticationFailed


class Argon2PasswordHasher:
    """argon2id with argon2-cffi's defaults (RFC 9106's low-memory profile)."""

    def __init__(self, hasher: PasswordHasher | None = None) -> None:
        self.hasher = hasher or PasswordHasher()

    def hash(self, password: str) -> str:
        return self.hasher.hash(password)

    def verify(self, password_hash: str, password: str) -> bool:
        try:
            return self.hasher.verify(password_hash, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False

    def needs_rehash(self, password_hash: str) -> bool:
        try:
            return self.hasher.check_needs_rehash(password_hash)
        except InvalidHashError:
            return False


class JwtTokenCodec:
    """HS256 JWTs; a token must carry exp, iat, sub and jti, and be issued by metrify."""

    ALGORITHM = "HS256"

    def __init__(self, secret: str, issuer: str = "metrify") -> None:
        self.secret = secret
        self.issuer = issuer

    def encode(self, claims: Mapping[str, Any]) -> str:
        return jwt.encode(dict(claims), self.secret, algorithm=self.ALGORITHM)

    def decode(self, token: str) -> dict[str, Any]:
        try:
            return jwt.decode(
                token,
                self.secret,
                algorithms=[self.ALGORITHM],
                issuer=self.issuer,
                options={"require": ["exp", "iat", "sub", "jti"]},
            )
        except jwt.ExpiredSignatureError:
            raise AuthenticationFailed("the token has expired") from None
        except jwt.InvalidTokenError:
            raise AuthenticationFailed("the token is not valid") from None


def load_or_create_secret(path: Path) -> str:
    """The secret kept in `path` (mode 0600), created with 256 random bits when missing. Creation is
    exclusive, so processes starting together all end up with the same secret."""
    try:
        text = path.read_text(encoding="utf-8").strip()
        if text:
            return text
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_hex(32)
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process is writing it: wait for its content
        for _ in range(100):
            text = path.read_text(encoding="utf-8").strip()
            if text:
                return text
            time.sleep(0.02)
        raise RuntimeError(f"{path} exists but stays empty: delete it, or set METRIFY_AUTH__SECRET") from None
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        handle.write(secret + "\n")
    os.chmod(path, 0o600)
    return secret
