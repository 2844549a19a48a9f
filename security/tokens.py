"""Bearer tokens: the local signing key, minting, and validation (JWT, RFC 7519; JWS, RFC 7515).

Production identity comes from an OIDC provider's JWKS (``DMS_AUTH_JWKS_URL``, or a JWKS file
``DMS_AUTH_JWKS_FILE``); locally, :class:`LocalSigningKey` keeps an EC P-256 key in
``<data_dir>/identity/signing-key.json`` and ``dms token`` mints ES256 tokens with it.

:class:`TokenValidator` follows RFC 8725 (JWT best current practices):

- the header ``alg`` is checked against a configured allow-list *before* any key is touched;
  ``none`` and every ``HS*`` are refused always (a public key must never serve as an HMAC secret);
- the verification key is chosen by ``kid`` (required when the key set holds several keys) and must
  suit the algorithm; keys in a token header (``jwk``, ``jku``, ``x5u``) are never used;
- ``exp``, ``iss``, ``aud`` and ``sub`` are required; ``iss``/``aud`` must equal the configured values;
  ``exp``/``nbf``/``iat`` are checked with a small leeway for clock skew;
- a JWKS fetched over HTTP is cached (TTL) and refetched at most once per ``jwks_min_refetch_s`` when an
  unknown ``kid`` appears (key rotation), so a flood of forged ``kid`` values cannot hammer the IdP.

Every refusal raises :class:`~security.errors.Unauthenticated` with the same client message; its
``reason`` (a :class:`Refusal` value) says why, for server-side logs and metrics only.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import ipaddress
import json
import logging
import os
import re
import secrets
import stat
import time
import uuid
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from joserfc import jwt
from joserfc.errors import (
    BadSignatureError,
    ClaimError,
    ExpiredTokenError,
    InvalidKeyCurveError,
    InvalidKeyTypeError,
    JoseError,
    MissingClaimError,
    SecurityWarning,
    UnsupportedKeyAlgorithmError,
)
from joserfc.jwk import ECKey, JWKRegistry, Key, KeySet
from joserfc.jws import JWSRegistry

from graph_schema.errors import BadInput, ConfigError
from security.errors import Unauthenticated
from security.roles import Role

if TYPE_CHECKING:
    import httpx

    from server.settings import Settings

log = logging.getLogger(__name__)

SIGNING_ALG = "ES256"
MAX_TOKEN_BYTES = 8192
MAX_JWKS_BYTES = 1_048_576


class Refusal(StrEnum):
    """Why a token was refused (``Unauthenticated.reason``); a closed set, safe as a metric label."""

    MISSING = "missing"
    TOO_LARGE = "too_large"
    MALFORMED = "malformed"
    ALG_NONE = "alg_none"
    ALG_CONFUSION = "alg_confusion"  # HS* offered to an asymmetric verifier
    ALG_NOT_ALLOWED = "alg_not_allowed"
    ALG_KEY_MISMATCH = "alg_key_mismatch"
    MISSING_KID = "missing_kid"
    UNKNOWN_KID = "unknown_kid"
    BAD_SIGNATURE = "bad_signature"
    EXPIRED = "expired"
    NOT_YET_VALID = "not_yet_valid"
    ISSUED_IN_FUTURE = "issued_in_future"
    WRONG_AUDIENCE = "wrong_audience"
    WRONG_ISSUER = "wrong_issuer"
    MISSING_CLAIM = "missing_claim"
    INVALID_CLAIM = "invalid_claim"
    NO_KNOWN_ROLE = "no_known_role"
    JWKS_UNAVAILABLE = "jwks_unavailable"


def _refuse(reason: Refusal, detail: str = "") -> Unauthenticated:
    if detail:
        log.debug("token refused: %s (%s)", reason.value, detail)
    return Unauthenticated(reason.value)


@dataclass(frozen=True)
class Principal:
    """The identity behind a validated token."""

    sub: str
    roles: frozenset[Role]
    feeders: frozenset[str] | None  # None: all feeders
    token_id: str
    expires_at: datetime
    # The ``customer_account`` claim: the account a CUSTOMER token acts for (its meters' energy
    # usage, graph_schema.historian.ami.meters_of_account). None: the token names no account.
    customer_account: str | None = None


# --- local signing key -------------------------------------------------------------------------


class LocalSigningKey:
    """An EC P-256 private key (JWK) in ``<data_dir>/identity/signing-key.json``, made on first use.

    The directory is created with mode 0700 and the file with 0600; a key file that group or others
    can read is refused (it may have leaked). ``kid`` is the key's RFC 7638 thumbprint. The private
    key never appears in ``repr``, ``str`` or logs.
    """

    __slots__ = ("_key", "_path")

    def __init__(self, data_dir: Path | str) -> None:
        self._path = Path(data_dir) / "identity" / "signing-key.json"
        self._key: ECKey | None = None

    @property
    def path(self) -> Path:
        return self._path

    @property
    def kid(self) -> str:
        return self._private().thumbprint()

    def __repr__(self) -> str:
        return f"LocalSigningKey(path={str(self._path)!r})"

    __str__ = __repr__

    def public_jwks(self) -> dict[str, Any]:
        """The public half as a JWKS document (``{"keys": [...]}``)."""
        return {"keys": [self._public_jwk()]}

    def public_keyset(self) -> KeySet:
        return KeySet([JWKRegistry.import_key(self._public_jwk())])

    def sign(self, claims: dict[str, Any]) -> str:
        """Sign ``claims`` as an ES256 JWT with this key's ``kid`` in the header."""
        key = self._private()
        header = {"alg": SIGNING_ALG, "kid": key.thumbprint(), "typ": "JWT"}
        return jwt.encode(header, claims, key, algorithms=[SIGNING_ALG])

    def _public_jwk(self) -> dict[str, Any]:
        key = self._private()
        pub = {k: v for k, v in key.as_dict(private=False).items() if k in {"kty", "crv", "x", "y"}}
        return {**pub, "kid": key.thumbprint(), "alg": SIGNING_ALG, "use": "sig"}

    def _private(self) -> ECKey:
        if self._key is None:
            self._key = self._load_or_create()
        return self._key

    def _load_or_create(self) -> ECKey:
        directory = self._path.parent
        try:
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(directory, 0o700)
        except OSError as exc:
            raise ConfigError(
                f"cannot create the identity directory {str(directory)!r} ({exc.strerror}); "
                f"make the data directory writable or set DMS_DATA_DIR"
            ) from None
        if not self._path.exists():
            self._create()
        return self._load()

    def _create(self) -> None:
        key = ECKey.generate_key("P-256", {"alg": SIGNING_ALG, "use": "sig"}, private=True)
        data = json.dumps(key.as_dict(private=True), sort_keys=True).encode()
        tmp = self._path.with_name(f".{self._path.name}.{secrets.token_hex(8)}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            # link() fails if another process created the key meanwhile: then both use that one.
            with contextlib.suppress(FileExistsError):
                os.link(tmp, self._path)
                log.info("created local signing key %s (kid %s)", self._path, key.thumbprint())
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    def _load(self) -> ECKey:
        fix = "delete it to create a new key (tokens signed with the old one stop validating)"
        try:
            st = self._path.stat()
            if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
                raise ConfigError(
                    f"signing key {str(self._path)!r} is readable by group or others "
                    f"(mode {stat.S_IMODE(st.st_mode):o}); run chmod 600 on it if it has not leaked, "
                    f"else {fix}"
                )
            data = json.loads(self._path.read_text(encoding="utf-8"))
            key = ECKey.import_key(data)
        except ConfigError:
            raise
        except (OSError, ValueError, JoseError) as exc:
            raise ConfigError(
                f"signing key {str(self._path)!r} cannot be read ({type(exc).__name__}); {fix}"
            ) from None
        if not key.is_private or key.get("crv") != "P-256":
            raise ConfigError(f"signing key {str(self._path)!r} is not an EC P-256 private key; {fix}")
        return key


def mint_token(
    key: LocalSigningKey,
    *,
    role: str | Iterable[str],
    sub: str,
    ttl_s: int = 3600,
    issuer: str,
    audience: str,
    feeders: list[str] | None = None,
    now: float | datetime | None = None,
    customer_account: str | None = None,
) -> str:
    """Mint an ES256 bearer token for the local identity.

    Claims: ``iss aud sub iat nbf exp jti roles`` and, when given, ``feeders`` (the only feeders the
    identity may act on) and ``customer_account`` (the customer account a CUSTOMER token acts for).
    Role names must be :class:`Role` values.
    """
    names = [role] if isinstance(role, str) else list(role)
    roles: list[str] = []
    for name in names:
        try:
            roles.append(Role(str(name).upper()).value)
        except ValueError:
            raise BadInput(f"unknown role {name!r}; use one of {', '.join(r.value for r in Role)}") from None
    if not roles:
        raise BadInput(f"a token needs at least one role; use one of {', '.join(r.value for r in Role)}")
    if not sub:
        raise BadInput("a token needs a subject (sub); name the person or system it is for")
    if ttl_s <= 0:
        raise BadInput(f"ttl_s={ttl_s} must be positive (seconds the token stays valid)")
    if isinstance(now, datetime):
        iat = int(now.timestamp())
    else:
        iat = int(time.time() if now is None else now)
    claims: dict[str, Any] = {
        "iss": issuer,
        "aud": audience,
        "sub": sub,
        "iat": iat,
        "nbf": iat,
        "exp": iat + int(ttl_s),
        "jti": uuid.uuid4().hex,
        "roles": sorted(set(roles)),
    }
    if feeders is not None:
        claims["feeders"] = sorted({str(f) for f in feeders})
    if customer_account is not None:
        claims["customer_account"] = str(customer_account)
    return key.sign(claims)


# --- validation --------------------------------------------------------------------------------


def _is_refused_alg(alg: str) -> bool:
    return alg.lower() == "none" or alg.upper().startswith("HS")


@dataclass(frozen=True)
class ValidatorConfig:
    """What :class:`TokenValidator` accepts. Exactly one key source: ``local_key``, ``jwks_file`` or
    ``jwks_url``."""

    issuer: str
    audience: str
    algorithms: tuple[str, ...] = ("ES256", "RS256", "EdDSA")
    leeway_s: int = 30
    local_key: LocalSigningKey | None = None
    jwks_file: Path | None = None
    jwks_url: str | None = None
    jwks_cache_ttl_s: float = 300.0
    jwks_min_refetch_s: float = 30.0
    jwks_timeout_s: float = 5.0
    roles_claim: str = "roles"

    def __post_init__(self) -> None:
        sources = [s for s in (self.local_key, self.jwks_file, self.jwks_url) if s is not None]
        if len(sources) != 1:
            raise ConfigError(
                "token validation needs exactly one key source: DMS_AUTH_JWKS_URL, DMS_AUTH_JWKS_FILE, "
                "or neither (the local signing key); unset all but one"
            )
        if not self.algorithms:
            raise ConfigError("DMS_AUTH_ALGORITHMS is empty; list asymmetric algorithms such as ES256,RS256")
        for alg in self.algorithms:
            if _is_refused_alg(alg):
                raise ConfigError(
                    f"DMS_AUTH_ALGORITHMS contains {alg!r}; 'none' and HMAC (HS*) algorithms are never "
                    f"accepted. List asymmetric algorithms such as ES256,RS256"
                )
            if alg not in JWSRegistry.algorithms:
                raise ConfigError(
                    f"DMS_AUTH_ALGORITHMS contains unknown algorithm {alg!r}; use e.g. ES256,RS256"
                )
        if not self.issuer or not self.audience:
            raise ConfigError("DMS_AUTH_ISSUER and DMS_AUTH_AUDIENCE must not be empty")
        if self.jwks_url is not None:
            parts = urlsplit(self.jwks_url)
            if parts.scheme != "https" and not (parts.scheme == "http" and _is_loopback(parts.hostname)):
                raise ConfigError(
                    f"DMS_AUTH_JWKS_URL={self.jwks_url!r} must use https (plain http only on loopback)"
                )

    @classmethod
    def from_settings(
        cls, settings: Settings, *, local_key: LocalSigningKey | None = None
    ) -> ValidatorConfig:
        """Key source: ``DMS_AUTH_JWKS_URL``, else ``DMS_AUTH_JWKS_FILE``, else the local signing key."""
        url, file = settings.auth_jwks_url, settings.auth_jwks_file
        if url and file:
            raise ConfigError("DMS_AUTH_JWKS_URL and DMS_AUTH_JWKS_FILE are both set; set only one")
        return cls(
            issuer=settings.auth_issuer,
            audience=settings.auth_audience,
            algorithms=tuple(settings.auth_algorithms),
            leeway_s=settings.auth_leeway_s,
            jwks_url=url or None,
            jwks_file=Path(file) if file else None,
            local_key=None if (url or file) else (local_key or LocalSigningKey(settings.data_dir)),
        )


def _is_loopback(host: str | None) -> bool:
    if host is None:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


_B64URL = re.compile(r"^[A-Za-z0-9_-]*$")


def _b64url_json(segment: str) -> Any:
    if not segment or not _B64URL.match(segment):
        raise ValueError("not base64url")
    raw = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    return json.loads(raw)


def parse_jwks(document: Any) -> KeySet:
    """Public signature keys of a JWKS document. Symmetric (``oct``) and encryption keys are
    dropped; private parts, if a misconfigured IdP publishes them, are discarded."""
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise ValueError("not a JWKS document (no 'keys' list)")
    keys: list[Key] = []
    for entry in document["keys"]:
        if not isinstance(entry, dict) or entry.get("kty") not in {"EC", "RSA", "OKP"}:
            continue
        if entry.get("use") not in (None, "sig"):
            continue
        try:
            key = JWKRegistry.import_key(entry)
            public = key.as_dict(private=False)
            for extra in ("kid", "alg", "use"):
                if extra in entry:
                    public[extra] = entry[extra]
            keys.append(JWKRegistry.import_key(public))
        except (JoseError, ValueError, TypeError, KeyError) as exc:
            log.warning("ignoring unusable JWKS key kid=%s (%s)", entry.get("kid"), type(exc).__name__)
    if not keys:
        raise ValueError("JWKS holds no usable public signature key")
    return KeySet(keys)


class TokenValidator:
    """Validates bearer tokens into :class:`Principal` values (see the module docstring)."""

    def __init__(
        self,
        config: ValidatorConfig,
        *,
        http_client: httpx.AsyncClient | None = None,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self._clock = clock
        self._monotonic = monotonic
        self._http = http_client
        self._owns_http = False
        self._keys: KeySet | None = config.local_key.public_keyset() if config.local_key else None
        self._fetched_at: float | None = None
        self._last_attempt: float | None = None
        self._lock = asyncio.Lock()
        self._file_mtime: float | None = None

    @classmethod
    def from_settings(cls, settings: Settings, **kwargs: Any) -> TokenValidator:
        return cls(ValidatorConfig.from_settings(settings), **kwargs)

    async def aclose(self) -> None:
        if self._owns_http and self._http is not None:
            await self._http.aclose()
            self._http = None

    async def __aenter__(self) -> TokenValidator:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- the check --

    async def validate(self, token: str | None) -> Principal:
        """Return the token's principal or raise :class:`Unauthenticated` (generic message; ``reason``
        says why)."""
        if not token or not isinstance(token, str):
            raise _refuse(Refusal.MISSING)
        if len(token) > MAX_TOKEN_BYTES:
            raise _refuse(Refusal.TOO_LARGE)
        parts = token.split(".")
        if len(parts) != 3:
            raise _refuse(Refusal.MALFORMED, f"{len(parts)} segments")
        try:
            header = _b64url_json(parts[0])
        except (ValueError, binascii.Error, UnicodeDecodeError) as exc:
            raise _refuse(Refusal.MALFORMED, f"header: {type(exc).__name__}") from None
        if not isinstance(header, dict):
            raise _refuse(Refusal.MALFORMED, "header is not an object")
        alg = header.get("alg")
        if not isinstance(alg, str) or not alg:
            raise _refuse(Refusal.MALFORMED, "no alg")
        # The algorithm decides before any key is looked at (RFC 8725 section 3.1).
        if alg.lower() == "none":
            raise _refuse(Refusal.ALG_NONE)
        if alg.upper().startswith("HS"):
            raise _refuse(Refusal.ALG_CONFUSION, alg)
        if alg not in self.config.algorithms:
            raise _refuse(Refusal.ALG_NOT_ALLOWED, alg)
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise _refuse(Refusal.MALFORMED, "kid is not a string")
        if not _B64URL.match(parts[1]) or not _B64URL.match(parts[2]) or not parts[2]:
            raise _refuse(Refusal.MALFORMED, "payload/signature not base64url")

        key = await self._key_for(kid, alg)
        key_alg = key.get("alg")
        if key_alg is not None and key_alg != alg:
            raise _refuse(Refusal.ALG_KEY_MISMATCH, f"key alg {key_alg}, token alg {alg}")
        claims = self._verify(token, key, alg)
        self._check_claims(claims)
        return self._principal(claims)

    def _verify(self, token: str, key: Key, alg: str) -> dict[str, Any]:
        try:
            with warnings.catch_warnings():
                # joserfc flags "EdDSA" as deprecated by RFC 9864 ("Ed25519" replaces it); it is still
                # what many IdPs emit, and it is only accepted when configured.
                warnings.simplefilter("ignore", SecurityWarning)
                decoded = jwt.decode(token, key, algorithms=[alg])
        except BadSignatureError:
            raise _refuse(Refusal.BAD_SIGNATURE) from None
        except (InvalidKeyTypeError, InvalidKeyCurveError, UnsupportedKeyAlgorithmError) as exc:
            raise _refuse(Refusal.ALG_KEY_MISMATCH, type(exc).__name__) from None
        except (JoseError, ValueError, TypeError, binascii.Error, UnicodeDecodeError) as exc:
            raise _refuse(Refusal.MALFORMED, type(exc).__name__) from None
        return dict(decoded.claims)

    def _check_claims(self, claims: dict[str, Any]) -> None:
        registry = jwt.JWTClaimsRegistry(
            now=int(self._clock()),
            leeway=self.config.leeway_s,
            iss={"essential": True, "value": self.config.issuer},
            aud={"essential": True, "value": self.config.audience},
            exp={"essential": True},
            sub={"essential": True},
        )
        # joserfc checks claims in token order; put the time window first so a token from the
        # future reports "not yet valid" rather than whichever claim the issuer happened to list first.
        ordered = {k: claims[k] for k in ("exp", "nbf", "iss", "aud") if k in claims} | claims
        try:
            registry.validate(ordered)
        except ExpiredTokenError:
            raise _refuse(Refusal.EXPIRED) from None
        except MissingClaimError as exc:
            raise _refuse(Refusal.MISSING_CLAIM, exc.claim) from None
        except ClaimError as exc:
            reason = {
                "nbf": Refusal.NOT_YET_VALID,
                "iat": Refusal.ISSUED_IN_FUTURE,
                "aud": Refusal.WRONG_AUDIENCE,
                "iss": Refusal.WRONG_ISSUER,
            }.get(exc.claim, Refusal.INVALID_CLAIM)
            raise _refuse(reason, exc.claim) from None

    def _principal(self, claims: dict[str, Any]) -> Principal:
        sub = claims["sub"]
        raw_roles = claims.get(self.config.roles_claim)
        if isinstance(raw_roles, str):
            raw_roles = [raw_roles]
        if raw_roles is None:
            raw_roles = []
        if not isinstance(raw_roles, list) or not all(isinstance(r, str) for r in raw_roles):
            raise _refuse(Refusal.INVALID_CLAIM, self.config.roles_claim)
        roles: set[Role] = set()
        unknown: list[str] = []
        for name in raw_roles:
            try:
                roles.add(Role(name.upper()))
            except ValueError:
                unknown.append(name)
        if unknown:
            log.info("token for sub=%s carries unknown roles %s; ignored", sub, sorted(unknown)[:10])
        if not roles:
            raise _refuse(Refusal.NO_KNOWN_ROLE)
        raw_feeders = claims.get("feeders")
        feeders: frozenset[str] | None = None
        if raw_feeders is not None:
            if not isinstance(raw_feeders, list) or not all(isinstance(f, str) for f in raw_feeders):
                raise _refuse(Refusal.INVALID_CLAIM, "feeders")
            feeders = frozenset(raw_feeders)
        try:
            expires_at = datetime.fromtimestamp(float(claims["exp"]), UTC)
        except (OverflowError, ValueError, OSError):
            raise _refuse(Refusal.INVALID_CLAIM, "exp out of range") from None
        account = claims.get("customer_account")
        if account is not None and (not isinstance(account, str) or not account):
            raise _refuse(Refusal.INVALID_CLAIM, "customer_account")
        jti = claims.get("jti")
        return Principal(
            sub=sub,
            roles=frozenset(roles),
            feeders=feeders,
            token_id=jti if isinstance(jti, str) and jti else "",
            expires_at=expires_at,
            customer_account=account,
        )

    # -- keys --

    async def _key_for(self, kid: str | None, alg: str) -> Key:
        keys = await self._keyset(refresh=False)
        key = _pick(keys, kid, alg)
        if key is None and kid is not None and self.config.local_key is None:
            # Key rotation: an unknown kid earns one (rate-limited) refetch before refusal.
            fresh = await self._keyset(refresh=True)
            if fresh is not keys:
                key = _pick(fresh, kid, alg)
                keys = fresh
        if key is None:
            if kid is None:
                raise _refuse(Refusal.MISSING_KID, f"{len(keys.keys)} keys in the set")
            raise _refuse(Refusal.UNKNOWN_KID, kid)
        return key

    async def _keyset(self, *, refresh: bool) -> KeySet:
        if self.config.local_key is not None:
            assert self._keys is not None
            return self._keys
        now = self._monotonic()
        if self._keys is not None and not refresh and self._fetched_at is not None \
                and now - self._fetched_at < self.config.jwks_cache_ttl_s:
            return self._keys
        async with self._lock:
            now = self._monotonic()
            if self._keys is not None and self._fetched_at is not None:
                fresh_enough = now - self._fetched_at < self.config.jwks_cache_ttl_s
                if not refresh and fresh_enough:
                    return self._keys  # another task refreshed it while we waited
            if self._last_attempt is not None:
                since = now - self._last_attempt
                if self._keys is not None and since < self.config.jwks_min_refetch_s:
                    return self._keys  # refetch rate limit: keep what we have
                if self._keys is None and since < min(self.config.jwks_min_refetch_s, 5.0):
                    # Never loaded and the last try failed moments ago: do not hammer a down IdP.
                    raise _refuse(Refusal.JWKS_UNAVAILABLE, "retry pending")
            self._last_attempt = now
            try:
                keys = await self._load_keys()
            except Exception as exc:
                where = self.config.jwks_url or str(self.config.jwks_file)
                if self._keys is not None:
                    log.warning("JWKS refresh from %s failed (%s); keeping the cached keys", where, exc)
                    return self._keys
                log.error("JWKS from %s unavailable (%s); every token is refused until it loads", where, exc)
                raise _refuse(Refusal.JWKS_UNAVAILABLE) from None
            self._keys, self._fetched_at = keys, self._monotonic()
            return keys

    async def _load_keys(self) -> KeySet:
        if self.config.jwks_file is not None:
            text = await asyncio.to_thread(self.config.jwks_file.read_text, encoding="utf-8")
            return parse_jwks(json.loads(text))
        assert self.config.jwks_url is not None
        client = self._client()
        async with client.stream("GET", self.config.jwks_url, headers={"Accept": "application/json"},
                                 timeout=self.config.jwks_timeout_s) as response:
            if response.status_code != 200:
                raise ValueError(f"HTTP {response.status_code}")
            body = bytearray()
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > MAX_JWKS_BYTES:
                    raise ValueError(f"JWKS larger than {MAX_JWKS_BYTES} bytes")
        return parse_jwks(json.loads(bytes(body)))

    def _client(self) -> httpx.AsyncClient:
        if self._http is None:
            import httpx

            self._http = httpx.AsyncClient(follow_redirects=False)
            self._owns_http = True
        return self._http


def _kty_for(alg: str) -> str | None:
    if alg.startswith("ES"):
        return "EC"
    if alg.startswith(("RS", "PS")):
        return "RSA"
    if alg.startswith("Ed"):
        return "OKP"
    return None


def _pick(keys: KeySet, kid: str | None, alg: str) -> Key | None:
    if kid is None:
        # Without a kid only an unambiguous set will do.
        return keys.keys[0] if len(keys.keys) == 1 else None
    matches = [key for key in keys.keys if key.kid == kid]
    # Prefer the key that suits the algorithm when an IdP reuses one kid across key types; a key of
    # the wrong type is still returned so the refusal says "alg_key_mismatch", not "unknown_kid".
    kty = _kty_for(alg)
    matches.sort(key=lambda k: k.key_type != kty)
    return matches[0] if matches else None
