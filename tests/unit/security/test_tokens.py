"""Token minting and validation: every class of bad token is refused with a precise ``reason`` and a
generic client message; JWKS from a file and from a URL (httpx.MockTransport, no sockets)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import stat
from pathlib import Path
from typing import Any

import httpx
import pytest
from joserfc import jwt
from joserfc.jwk import ECKey, RSAKey

from graph_schema.errors import BadInput, ConfigError
from security.errors import GENERIC_TOKEN_MESSAGE, Unauthenticated
from security.roles import Role
from security.tokens import (
    LocalSigningKey,
    Principal,
    Refusal,
    TokenValidator,
    ValidatorConfig,
    mint_token,
    parse_jwks,
)

ISS = "dms-test"
AUD = "dms-headend"
NOW = 1_800_000_000


def _b64(data: bytes | dict[str, Any]) -> str:
    raw = json.dumps(data).encode() if isinstance(data, dict) else data
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _claims(**over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"iss": ISS, "aud": AUD, "sub": "alice", "iat": NOW, "nbf": NOW,
                            "exp": NOW + 3600, "jti": "j-1", "roles": ["OPERATOR"]}
    base.update(over)
    return {k: v for k, v in base.items() if v is not None}


class Clock:
    def __init__(self, t: float = NOW) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def key(tmp_path: Path) -> LocalSigningKey:
    return LocalSigningKey(tmp_path)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def validator(key: LocalSigningKey, clock: Clock) -> TokenValidator:
    return TokenValidator(ValidatorConfig(issuer=ISS, audience=AUD, local_key=key, leeway_s=30), clock=clock)


def _mint(key: LocalSigningKey, **kw: Any) -> str:
    args: dict[str, Any] = {"role": "OPERATOR", "sub": "alice", "issuer": ISS, "audience": AUD, "now": NOW}
    args.update(kw)
    return mint_token(key, **args)


async def _refused(validator: TokenValidator, token: str | None) -> str:
    with pytest.raises(Unauthenticated) as info:
        await validator.validate(token)  # type: ignore[arg-type]
    err = info.value
    assert str(err) == GENERIC_TOKEN_MESSAGE
    assert err.code == "UNAUTHENTICATED"
    assert err.extensions() == {"code": "UNAUTHENTICATED"}  # the reason never reaches a client
    return err.reason


# --- local signing key -------------------------------------------------------------------------


def test_local_key_created_private_and_reused(tmp_path: Path) -> None:
    key = LocalSigningKey(tmp_path)
    kid = key.kid
    path = tmp_path / "identity" / "signing-key.json"
    assert key.path == path
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert LocalSigningKey(tmp_path).kid == kid  # reused, not regenerated
    assert ECKey.import_key(json.loads(path.read_text())).thumbprint() == kid


def test_local_key_never_shows_private_part(tmp_path: Path) -> None:
    key = LocalSigningKey(tmp_path)
    jwks = key.public_jwks()
    d = json.loads(key.path.read_text())["d"]
    assert len(jwks["keys"]) == 1
    pub = jwks["keys"][0]
    assert "d" not in pub and pub["kid"] == key.kid and pub["alg"] == "ES256" and pub["kty"] == "EC"
    for text in (repr(key), str(key), json.dumps(jwks)):
        assert d not in text


def test_local_key_readable_by_others_is_refused(tmp_path: Path) -> None:
    key = LocalSigningKey(tmp_path)
    key.public_jwks()
    os.chmod(key.path, 0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        LocalSigningKey(tmp_path).public_jwks()


def test_local_key_garbage_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "identity" / "signing-key.json"
    path.parent.mkdir(mode=0o700)
    path.write_text("not json")
    os.chmod(path, 0o600)
    with pytest.raises(ConfigError, match="delete it"):
        LocalSigningKey(tmp_path).kid  # noqa: B018


def test_mint_rejects_unknown_role_and_bad_ttl(key: LocalSigningKey) -> None:
    with pytest.raises(BadInput, match="unknown role"):
        _mint(key, role="WIZARD")
    with pytest.raises(BadInput, match="ttl_s"):
        _mint(key, ttl_s=0)


# --- good tokens -------------------------------------------------------------------------------


async def test_valid_token_gives_principal(key: LocalSigningKey, validator: TokenValidator) -> None:
    token = _mint(key, role=["operator", "VIEWER"], feeders=["f2", "f1"], ttl_s=600)
    p = await validator.validate(token)
    assert isinstance(p, Principal)
    assert p.sub == "alice"
    assert p.roles == frozenset({Role.OPERATOR, Role.VIEWER})
    assert p.feeders == frozenset({"f1", "f2"})
    assert p.token_id
    assert p.expires_at.timestamp() == NOW + 600
    claims = jwt.decode(token, key.public_keyset()).claims
    assert set(claims) == {"iss", "aud", "sub", "iat", "nbf", "exp", "jti", "roles", "feeders"}


async def test_no_feeders_claim_means_all_feeders(key: LocalSigningKey, validator: TokenValidator) -> None:
    assert (await validator.validate(_mint(key))).feeders is None


async def test_unknown_roles_are_ignored(key: LocalSigningKey, validator: TokenValidator) -> None:
    p = await validator.validate(key.sign(_claims(roles=["WIZARD", "viewer"])))
    assert p.roles == frozenset({Role.VIEWER})


async def test_audience_list_containing_ours_is_accepted(
    key: LocalSigningKey, validator: TokenValidator
) -> None:
    p = await validator.validate(key.sign(_claims(aud=["other", AUD])))
    assert p.sub == "alice"


# --- every bad-token class ---------------------------------------------------------------------


@pytest.mark.parametrize("token", [None, ""])
async def test_missing(validator: TokenValidator, token: str | None) -> None:
    assert await _refused(validator, token) == Refusal.MISSING


@pytest.mark.parametrize(
    "token",
    [
        "abc",
        "a.b",
        "a.b.c.d",
        "!!!.e30.sig",
        _b64(b"not json") + ".e30.c2ln",
        _b64(b"[1,2]") + ".e30.c2ln",
        _b64({"typ": "JWT"}) + ".e30.c2ln",  # no alg
    ],
)
async def test_malformed(validator: TokenValidator, token: str) -> None:
    assert await _refused(validator, token) == Refusal.MALFORMED


async def test_malformed_payload_and_signature(key: LocalSigningKey, validator: TokenValidator) -> None:
    h, p, s = _mint(key).split(".")
    assert await _refused(validator, f"{h}.{p}!.{s}") == Refusal.MALFORMED
    assert await _refused(validator, f"{h}.{p}.") == Refusal.MALFORMED
    not_json = _b64(b"not json")
    assert await _refused(validator, f"{h}.{not_json}.{s}") in {Refusal.MALFORMED, Refusal.BAD_SIGNATURE}


async def test_too_large(validator: TokenValidator) -> None:
    assert await _refused(validator, "a" * 9000) == Refusal.TOO_LARGE


async def test_expired(key: LocalSigningKey, validator: TokenValidator, clock: Clock) -> None:
    token = _mint(key, ttl_s=60)
    clock.t = NOW + 60 + 31  # beyond the 30 s leeway
    assert await _refused(validator, token) == Refusal.EXPIRED


async def test_expiry_leeway(key: LocalSigningKey, validator: TokenValidator, clock: Clock) -> None:
    token = _mint(key, ttl_s=60)
    clock.t = NOW + 60 + 20  # expired 20 s ago, inside the leeway
    assert (await validator.validate(token)).sub == "alice"


async def test_not_yet_valid(key: LocalSigningKey, validator: TokenValidator) -> None:
    assert await _refused(validator, _mint(key, now=NOW + 600)) == Refusal.NOT_YET_VALID
    assert await _refused(validator, key.sign(_claims(nbf=NOW + 120))) == Refusal.NOT_YET_VALID


async def test_nbf_within_leeway(key: LocalSigningKey, validator: TokenValidator) -> None:
    assert (await validator.validate(_mint(key, now=NOW + 20))).sub == "alice"


async def test_wrongly_signed(tmp_path: Path, key: LocalSigningKey, validator: TokenValidator) -> None:
    other = ECKey.generate_key("P-256", private=True)
    forged = jwt.encode({"alg": "ES256", "kid": key.kid}, _claims(), other, algorithms=["ES256"])
    assert await _refused(validator, forged) == Refusal.BAD_SIGNATURE


async def test_tampered_payload(key: LocalSigningKey, validator: TokenValidator) -> None:
    h, _, s = _mint(key).split(".")
    payload = _b64(_claims(roles=["SECADM"]))
    assert await _refused(validator, f"{h}.{payload}.{s}") == Refusal.BAD_SIGNATURE


async def test_wrong_audience(key: LocalSigningKey, validator: TokenValidator) -> None:
    assert await _refused(validator, _mint(key, audience="other-app")) == Refusal.WRONG_AUDIENCE


async def test_wrong_issuer(key: LocalSigningKey, validator: TokenValidator) -> None:
    assert await _refused(validator, _mint(key, issuer="https://evil.example")) == Refusal.WRONG_ISSUER


@pytest.mark.parametrize("claim", ["exp", "iss", "aud", "sub"])
async def test_required_claims(key: LocalSigningKey, validator: TokenValidator, claim: str) -> None:
    assert await _refused(validator, key.sign(_claims(**{claim: None}))) == Refusal.MISSING_CLAIM


@pytest.mark.parametrize("alg", ["none", "None", "NONE"])
async def test_alg_none(validator: TokenValidator, alg: str) -> None:
    token = f"{_b64({'alg': alg, 'typ': 'JWT'})}.{_b64(_claims())}."
    assert await _refused(validator, token) == Refusal.ALG_NONE
    assert await _refused(validator, token + "c2ln") == Refusal.ALG_NONE


@pytest.mark.parametrize("alg", ["HS256", "HS384", "HS512"])
async def test_alg_confusion_hmac_with_public_key(
    key: LocalSigningKey, validator: TokenValidator, alg: str
) -> None:
    """The classic attack: HMAC-sign with the *public* key as the secret."""
    public_bytes = ECKey.import_key(key.public_jwks()["keys"][0]).as_pem(private=False)
    signing_input = f"{_b64({'alg': alg, 'kid': key.kid, 'typ': 'JWT'})}.{_b64(_claims())}"
    digest = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}[alg]
    sig = _b64(hmac.new(public_bytes, signing_input.encode(), digest).digest())
    assert await _refused(validator, f"{signing_input}.{sig}") == Refusal.ALG_CONFUSION


async def test_alg_not_in_allow_list(key: LocalSigningKey, clock: Clock) -> None:
    v = TokenValidator(ValidatorConfig(issuer=ISS, audience=AUD, local_key=key, algorithms=("RS256",)),
                       clock=clock)
    assert await _refused(v, _mint(key)) == Refusal.ALG_NOT_ALLOWED


async def test_unknown_kid(key: LocalSigningKey, validator: TokenValidator) -> None:
    private = ECKey.import_key(json.loads(key.path.read_text()))
    token = jwt.encode({"alg": "ES256", "kid": "someone-else"}, _claims(), private, algorithms=["ES256"])
    assert await _refused(validator, token) == Refusal.UNKNOWN_KID


async def test_no_known_role(key: LocalSigningKey, validator: TokenValidator) -> None:
    assert await _refused(validator, key.sign(_claims(roles=["WIZARD", "root"]))) == Refusal.NO_KNOWN_ROLE
    assert await _refused(validator, key.sign(_claims(roles=None))) == Refusal.NO_KNOWN_ROLE
    assert await _refused(validator, key.sign(_claims(roles=[]))) == Refusal.NO_KNOWN_ROLE


@pytest.mark.parametrize("over", [{"roles": 5}, {"roles": [1]}, {"feeders": "f1"}, {"feeders": [1]}])
async def test_malformed_role_or_feeder_claims(
    key: LocalSigningKey, validator: TokenValidator, over: dict[str, Any]
) -> None:
    assert await _refused(validator, key.sign(_claims(**over))) == Refusal.INVALID_CLAIM


async def test_expired_reason_is_not_in_message(key: LocalSigningKey, validator: TokenValidator,
                                                clock: Clock) -> None:
    clock.t = NOW + 10_000
    with pytest.raises(Unauthenticated) as info:
        await validator.validate(_mint(key))
    assert "expired" in info.value.reason
    assert info.value.reason not in {str(info.value), *map(str, info.value.extensions().values())}


# --- configuration -----------------------------------------------------------------------------


@pytest.mark.parametrize("algs", [("HS256",), ("ES256", "none"), ("hs512",), (), ("XX999",)])
def test_config_refuses_bad_algorithms(key: LocalSigningKey, algs: tuple[str, ...]) -> None:
    with pytest.raises(ConfigError):
        ValidatorConfig(issuer=ISS, audience=AUD, local_key=key, algorithms=algs)


def test_config_needs_exactly_one_source(key: LocalSigningKey, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="exactly one"):
        ValidatorConfig(issuer=ISS, audience=AUD)
    with pytest.raises(ConfigError, match="exactly one"):
        ValidatorConfig(issuer=ISS, audience=AUD, local_key=key, jwks_file=tmp_path / "k.json")


@pytest.mark.parametrize("url", ["http://idp.example/jwks", "ftp://idp.example/jwks"])
def test_config_refuses_plain_http_off_loopback(url: str) -> None:
    with pytest.raises(ConfigError, match="https"):
        ValidatorConfig(issuer=ISS, audience=AUD, jwks_url=url)


@pytest.mark.parametrize("url", ["http://127.0.0.1:8080/jwks", "http://localhost:8080/jwks", "http://[::1]:8080/jwks"])
def test_config_allows_http_on_loopback(url: str) -> None:
    cfg = ValidatorConfig(issuer=ISS, audience=AUD, jwks_url=url)
    assert cfg.jwks_url == url and cfg.local_key is None and cfg.jwks_file is None


def test_config_from_settings(tmp_path: Path) -> None:
    from server.settings import Settings

    cfg = ValidatorConfig.from_settings(Settings(data_dir=tmp_path))
    assert cfg.local_key is not None and cfg.jwks_url is None and cfg.jwks_file is None
    assert cfg.issuer == "dms-local" and cfg.audience == "dms-headend"
    cfg = ValidatorConfig.from_settings(Settings(data_dir=tmp_path, auth_jwks_url="https://idp.example/jwks"))
    assert cfg.local_key is None and cfg.jwks_url == "https://idp.example/jwks"
    with pytest.raises(ConfigError, match="only one"):
        ValidatorConfig.from_settings(
            Settings(data_dir=tmp_path, auth_jwks_url="https://idp.example/jwks", auth_jwks_file="x.json"))


# --- JWKS file ---------------------------------------------------------------------------------


def _jwks_of(*keys: ECKey | RSAKey, alg: str = "ES256") -> dict[str, Any]:
    out = []
    for k in keys:
        d = dict(k.as_dict(private=False))
        d["kid"] = k.thumbprint()
        d["alg"] = alg if isinstance(k, ECKey) else "RS256"
        out.append(d)
    return {"keys": out}


def _sign(private: ECKey | RSAKey, claims: dict[str, Any], *, kid: str | None = "auto",
          alg: str = "ES256") -> str:
    header: dict[str, Any] = {"alg": alg}
    if kid == "auto":
        header["kid"] = private.thumbprint()
    elif kid is not None:
        header["kid"] = kid
    return jwt.encode(header, claims, private, algorithms=[alg])


async def test_jwks_file_source(tmp_path: Path, clock: Clock) -> None:
    k1 = ECKey.generate_key("P-256", private=True)
    k2 = ECKey.generate_key("P-256", private=True)
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(_jwks_of(k1, k2)))
    v = TokenValidator(ValidatorConfig(issuer=ISS, audience=AUD, jwks_file=path), clock=clock)
    assert (await v.validate(_sign(k2, _claims()))).sub == "alice"
    assert (await v.validate(_sign(k1, _claims(sub="bob")))).sub == "bob"
    # several keys: a token without kid is ambiguous and refused
    assert await _refused(v, _sign(k1, _claims(), kid=None)) == Refusal.MISSING_KID
    # signed by k1 but claiming k2's kid
    assert await _refused(v, _sign(k1, _claims(), kid=k2.thumbprint())) == Refusal.BAD_SIGNATURE


async def test_jwks_single_key_without_kid_is_accepted(tmp_path: Path, clock: Clock) -> None:
    k1 = ECKey.generate_key("P-256", private=True)
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(_jwks_of(k1)))
    v = TokenValidator(ValidatorConfig(issuer=ISS, audience=AUD, jwks_file=path), clock=clock)
    assert (await v.validate(_sign(k1, _claims(), kid=None))).sub == "alice"


async def test_key_type_must_suit_alg(tmp_path: Path, clock: Clock) -> None:
    rsa = RSAKey.generate_key(2048, private=True)
    ec = ECKey.generate_key("P-256", private=True)
    jwks = _jwks_of(rsa)
    jwks["keys"][0].pop("alg")
    jwks["keys"][0]["kid"] = "k"
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(jwks))
    v = TokenValidator(ValidatorConfig(issuer=ISS, audience=AUD, jwks_file=path), clock=clock)
    assert await _refused(v, _sign(ec, _claims(), kid="k")) == Refusal.ALG_KEY_MISMATCH
    assert (await v.validate(_sign(rsa, _claims(), kid="k", alg="RS256"))).sub == "alice"


async def test_missing_jwks_file_refuses_every_token(tmp_path: Path, clock: Clock) -> None:
    v = TokenValidator(ValidatorConfig(issuer=ISS, audience=AUD, jwks_file=tmp_path / "absent.json"),
                       clock=clock)
    k1 = ECKey.generate_key("P-256", private=True)
    assert await _refused(v, _sign(k1, _claims())) == Refusal.JWKS_UNAVAILABLE


def test_parse_jwks_drops_symmetric_private_and_encryption_keys() -> None:
    ec = ECKey.generate_key("P-256", private=True)
    doc = {"keys": [
        {"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"},
        {**ec.as_dict(private=True), "kid": "ec"},
        {**ECKey.generate_key("P-256", private=False).as_dict(), "kid": "enc", "use": "enc"},
    ]}
    ks = parse_jwks(doc)
    assert [k.kid for k in ks.keys] == ["ec"]
    assert not ks.keys[0].is_private
    with pytest.raises(ValueError):
        parse_jwks({"keys": [{"kty": "oct", "k": "c2VjcmV0"}]})
    with pytest.raises(ValueError):
        parse_jwks({"nope": []})


# --- JWKS URL (httpx.MockTransport: no sockets) ------------------------------------------------


class FakeIdP:
    def __init__(self, *keys: ECKey) -> None:
        self.keys = list(keys)
        self.calls = 0
        self.status = 200

    def handler(self, request: httpx.Request) -> httpx.Response:
        assert request.url == httpx.URL("https://idp.example/jwks")
        self.calls += 1
        if self.status != 200:
            return httpx.Response(self.status, text="down")
        return httpx.Response(200, json=_jwks_of(*self.keys))


class Mono:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


async def _url_validator(idp: FakeIdP, clock: Clock, mono: Mono) -> tuple[TokenValidator, httpx.AsyncClient]:
    client = httpx.AsyncClient(transport=httpx.MockTransport(idp.handler))
    cfg = ValidatorConfig(issuer=ISS, audience=AUD, jwks_url="https://idp.example/jwks",
                          jwks_cache_ttl_s=300, jwks_min_refetch_s=30)
    return TokenValidator(cfg, http_client=client, clock=clock, monotonic=mono), client


async def test_jwks_url_caches(clock: Clock) -> None:
    k1 = ECKey.generate_key("P-256", private=True)
    idp, mono = FakeIdP(k1), Mono()
    v, client = await _url_validator(idp, clock, mono)
    async with client:
        for _ in range(3):
            assert (await v.validate(_sign(k1, _claims()))).sub == "alice"
        assert idp.calls == 1
        mono.t += 301  # TTL over: refetched once
        await v.validate(_sign(k1, _claims()))
        await v.validate(_sign(k1, _claims()))
        assert idp.calls == 2


async def test_jwks_url_rotation_and_refetch_rate_limit(clock: Clock) -> None:
    k1, k2, k3 = (ECKey.generate_key("P-256", private=True) for _ in range(3))
    idp, mono = FakeIdP(k1), Mono()
    v, client = await _url_validator(idp, clock, mono)
    async with client:
        await v.validate(_sign(k1, _claims()))
        assert idp.calls == 1
        mono.t += 31
        idp.keys = [k1, k2]  # the IdP rotates in k2
        assert (await v.validate(_sign(k2, _claims()))).sub == "alice"
        assert idp.calls == 2  # one refetch for the unknown kid
        # forged kids do not hammer the IdP: at most one refetch per 30 s
        for i in range(5):
            assert await _refused(v, _sign(k3, _claims(), kid=f"forged-{i}")) == Refusal.UNKNOWN_KID
        assert idp.calls == 2
        idp.keys = [k2, k3]
        assert await _refused(v, _sign(k3, _claims())) == Refusal.UNKNOWN_KID  # still rate-limited
        mono.t += 31
        assert (await v.validate(_sign(k3, _claims()))).sub == "alice"
        assert idp.calls == 3


async def test_jwks_url_down_first_time_refuses(clock: Clock) -> None:
    k1 = ECKey.generate_key("P-256", private=True)
    idp, mono = FakeIdP(k1), Mono()
    idp.status = 503
    v, client = await _url_validator(idp, clock, mono)
    async with client:
        assert await _refused(v, _sign(k1, _claims())) == Refusal.JWKS_UNAVAILABLE
        assert await _refused(v, _sign(k1, _claims())) == Refusal.JWKS_UNAVAILABLE
        assert idp.calls == 1  # a down IdP is not hammered
        idp.status = 200
        mono.t += 6
        assert (await v.validate(_sign(k1, _claims()))).sub == "alice"
        assert idp.calls == 2


async def test_jwks_url_down_later_keeps_cached_keys(clock: Clock) -> None:
    k1 = ECKey.generate_key("P-256", private=True)
    idp, mono = FakeIdP(k1), Mono()
    v, client = await _url_validator(idp, clock, mono)
    async with client:
        await v.validate(_sign(k1, _claims()))
        idp.status = 500
        mono.t += 400
        assert (await v.validate(_sign(k1, _claims()))).sub == "alice"
        assert idp.calls == 2



@pytest.mark.parametrize("exp", [10**20, 1e300])
async def test_absurd_exp_is_refused_not_crashing(key: LocalSigningKey, validator: TokenValidator,
                                                  exp: float) -> None:
    assert await _refused(validator, key.sign(_claims(exp=exp))) == Refusal.INVALID_CLAIM


async def test_one_kid_for_two_key_types_picks_the_matching_one(tmp_path: Path, clock: Clock) -> None:
    rsa = RSAKey.generate_key(2048, private=True)
    ec = ECKey.generate_key("P-256", private=True)
    jwks = _jwks_of(rsa, ec)
    for entry in jwks["keys"]:
        entry["kid"] = "shared"
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(jwks))
    v = TokenValidator(ValidatorConfig(issuer=ISS, audience=AUD, jwks_file=path), clock=clock)
    assert (await v.validate(_sign(ec, _claims(), kid="shared"))).sub == "alice"
    assert (await v.validate(_sign(rsa, _claims(), kid="shared", alg="RS256"))).sub == "alice"


async def test_crit_header_is_refused(key: LocalSigningKey, validator: TokenValidator) -> None:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

    private = ECKey.import_key(json.loads(key.path.read_text())).private_key
    header = {"alg": "ES256", "kid": key.kid, "crit": ["x-custom"], "x-custom": 1}
    signing_input = f"{_b64(header)}.{_b64(_claims())}"
    r, s = decode_dss_signature(private.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256())))
    token = f"{signing_input}.{_b64(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"
    assert await _refused(validator, token) == Refusal.MALFORMED
