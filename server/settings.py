"""Typed settings, read once from ``DMS_*`` environment variables.

Nothing else in the project reads ``os.environ``. A bad value fails at start-up with the variable's
name, the value and what is expected. Secrets (``DMS_NEO4J_PASSWORD``) may instead come from a file
named by ``<NAME>_FILE`` (the Kubernetes way); their values are kept in :class:`Secret` so they are
never rendered in logs or reprs.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path

from graph_schema.errors import ConfigError
from graph_schema.secret import Secret

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


class _Reader:
    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env

    def str(self, name: str, default: str | None) -> str | None:
        v = self.env.get(name)
        return default if v is None or v == "" else v

    def int(self, name: str, default: int, *, minimum: int = 0, maximum: int | None = None) -> int:
        raw = self.env.get(name)
        if raw is None or raw == "":
            return default
        try:
            value = int(raw)
        except ValueError:
            raise ConfigError(f"{name}={raw!r} is not an integer; set it to a whole number") from None
        if value < minimum or (maximum is not None and value > maximum):
            rng = f">= {minimum}" + (f" and <= {maximum}" if maximum is not None else "")
            raise ConfigError(f"{name}={raw!r} is out of range; expected an integer {rng}")
        return value

    def float(self, name: str, default: float, *, minimum: float = 0.0) -> float:
        raw = self.env.get(name)
        if raw is None or raw == "":
            return default
        try:
            value = float(raw)
        except ValueError:
            raise ConfigError(f"{name}={raw!r} is not a number; set it to a decimal number") from None
        if value < minimum:
            raise ConfigError(f"{name}={raw!r} is out of range; expected a number >= {minimum}")
        return value

    def bool(self, name: str, default: bool) -> bool:
        raw = self.env.get(name)
        if raw is None:
            return default
        low = raw.strip().lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        raise ConfigError(f"{name}={raw!r} is not a boolean; use one of true/false, 1/0, yes/no, on/off")

    def list(self, name: str) -> tuple[str, ...]:
        raw = self.env.get(name, "")
        return tuple(p.strip() for p in raw.split(",") if p.strip())

    def secret(self, name: str, default: str = "") -> Secret:
        file_var = f"{name}_FILE"
        path = self.env.get(file_var)
        if path:
            try:
                return Secret(Path(path).read_text(encoding="utf-8").strip())
            except OSError as exc:
                raise ConfigError(
                    f"{file_var}={path!r} cannot be read ({exc.strerror}); point it at a readable file "
                    f"holding the secret, or set {name} instead"
                ) from None
        return Secret(self.env.get(name, default))


@dataclass(frozen=True)
class Settings:
    # Where the embedded graph store, the local signing key and the demo's runtime files live.
    data_dir: Path = field(default_factory=lambda: Path(".dms"))
    host: str = "127.0.0.1"
    port: int = 8000
    log_level: str = "INFO"
    log_json: bool = False

    # Graph store. No URI: the project starts its own local ArcadeDB Bolt server.
    neo4j_uri: str | None = None
    neo4j_user: str = "root"
    neo4j_password: Secret = field(default_factory=lambda: Secret(""))
    neo4j_database: str = "grid"

    # Ray. No address: a local ``ray.init()``.
    ray_address: str | None = None

    # Identity. No JWKS: a local signing key in the data directory (``dms token`` mints tokens).
    auth_issuer: str = "dms-local"
    auth_audience: str = "dms-headend"
    auth_jwks_url: str | None = None
    auth_jwks_file: str | None = None
    auth_algorithms: tuple[str, ...] = ("ES256", "RS256", "EdDSA")
    auth_leeway_s: int = 30

    # GraphQL surface.
    graphiql: bool = False
    introspection: bool = False
    max_query_depth: int = 12
    max_aliases: int = 30
    max_tokens: int = 2000
    max_complexity: int = 5000
    max_body_bytes: int = 1_000_000
    rate_limit_per_minute: int = 600
    cors_origins: tuple[str, ...] = ()
    metrics_public: bool = True
    tls_cert_file: str | None = None
    tls_key_file: str | None = None

    # Field protocols.
    opcua_allow_nosecurity: bool = False
    # The head-end's own OPC UA certificate, key and trusted RTU certificates (one folder); unset:
    # the self-signed demo certificates under <data_dir>/pki, trusting only the field simulator.
    opcua_pki_dir: str | None = None
    scan_interval_s: float = 1.0
    select_timeout_s: float = 10.0
    confirm_timeout_s: float = 5.0

    # FDIR: the default mode and per-feeder modes (AUTOMATIC, ADVISORY or OFF), and how long the
    # engine waits after the first indication for the rest (fault indicators, meters) to arrive.
    fdir_mode: str = "ADVISORY"
    fdir_modes: tuple[tuple[str, str], ...] = ()
    fdir_settle_s: float = 2.0

    # The audit chain's HMAC key (DMS_AUDIT_KEY_FILE: a Secret every API replica mounts); empty: a
    # local key under <data_dir>/audit, made on first use (security.audit.AuditKey).
    audit_key: Secret = field(default_factory=lambda: Secret(""))

    # Historian: the Parquet data set's root (a folder, or s3://bucket/prefix with credentials from
    # the environment; unset: <data_dir>/historian), how often actors write, how long data is kept,
    # and the utility's time zone (daily buckets follow it, daylight-saving days included).
    historian_uri: str | None = None
    historian_flush_s: float = 10.0
    historian_retention_days: int = 400
    timezone: str = "UTC"

    # Reports: the IEEE 1366 momentary/sustained threshold (minutes; the standard's 5 by default;
    # days follow ``timezone``), where local copies of report files are kept (unset:
    # <data_dir>/reports; the graph store keeps them too), and whether this replica runs the report
    # scheduler (replicas share the work: a schedule's report of a period is made once).
    reliability_momentary_min: float = 5.0
    reports_dir: str | None = None
    report_scheduler: bool = True

    # Load forecasting: the country whose public holidays shape the calendar (ISO 3166 code, the
    # ``holidays`` library's).
    forecast_holidays_country: str = "US"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: object) -> Settings:
        """Read every ``DMS_*`` variable; ``overrides`` (e.g. from CLI flags) win over the environment.

        Only pass the overrides you mean: ``None`` is applied too (``neo4j_uri=None`` forces the
        embedded store).
        """
        r = _Reader(os.environ if env is None else env)
        values: dict[str, object] = {
            "data_dir": Path(r.str("DMS_DATA_DIR", ".dms") or ".dms"),
            "host": r.str("DMS_HOST", "127.0.0.1"),
            "port": r.int("DMS_PORT", 8000, minimum=0, maximum=65535),
            "log_level": (r.str("DMS_LOG_LEVEL", "INFO") or "INFO").upper(),
            "log_json": r.bool("DMS_LOG_JSON", False),
            "neo4j_uri": r.str("DMS_NEO4J_URI", None),
            "neo4j_user": r.str("DMS_NEO4J_USER", "neo4j" if r.str("DMS_NEO4J_URI", None) else "root"),
            "neo4j_password": r.secret("DMS_NEO4J_PASSWORD"),
            "neo4j_database": r.str("DMS_NEO4J_DATABASE", "grid"),
            "ray_address": r.str("DMS_RAY_ADDRESS", None),
            "auth_issuer": r.str("DMS_AUTH_ISSUER", "dms-local"),
            "auth_audience": r.str("DMS_AUTH_AUDIENCE", "dms-headend"),
            "auth_jwks_url": r.str("DMS_AUTH_JWKS_URL", None),
            "auth_jwks_file": r.str("DMS_AUTH_JWKS_FILE", None),
            "auth_algorithms": r.list("DMS_AUTH_ALGORITHMS") or ("ES256", "RS256", "EdDSA"),
            "auth_leeway_s": r.int("DMS_AUTH_LEEWAY_S", 30, maximum=300),
            "graphiql": r.bool("DMS_GRAPHIQL", False),
            "introspection": r.bool("DMS_INTROSPECTION", False),
            "max_query_depth": r.int("DMS_MAX_QUERY_DEPTH", 12, minimum=1),
            "max_aliases": r.int("DMS_MAX_ALIASES", 30, minimum=1),
            "max_tokens": r.int("DMS_MAX_TOKENS", 2000, minimum=10),
            "max_complexity": r.int("DMS_MAX_COMPLEXITY", 5000, minimum=1),
            "max_body_bytes": r.int("DMS_MAX_BODY_BYTES", 1_000_000, minimum=1024),
            "rate_limit_per_minute": r.int("DMS_RATE_LIMIT_PER_MINUTE", 600, minimum=0),
            "cors_origins": r.list("DMS_CORS_ORIGINS"),
            "metrics_public": r.bool("DMS_METRICS_PUBLIC", True),
            "tls_cert_file": r.str("DMS_TLS_CERT_FILE", None),
            "tls_key_file": r.str("DMS_TLS_KEY_FILE", None),
            "opcua_allow_nosecurity": r.bool("DMS_OPCUA_ALLOW_NOSECURITY", False),
            "opcua_pki_dir": r.str("DMS_OPCUA_PKI_DIR", None),
            "scan_interval_s": r.float("DMS_SCAN_INTERVAL_S", 1.0, minimum=0.01),
            "select_timeout_s": r.float("DMS_SELECT_TIMEOUT_S", 10.0, minimum=0.1),
            "confirm_timeout_s": r.float("DMS_CONFIRM_TIMEOUT_S", 5.0, minimum=0.1),
            "fdir_mode": _fdir_mode("DMS_FDIR_MODE", r.str("DMS_FDIR_MODE", "ADVISORY") or "ADVISORY"),
            "fdir_modes": _fdir_modes(r.list("DMS_FDIR_MODES")),
            "fdir_settle_s": r.float("DMS_FDIR_SETTLE_S", 2.0, minimum=0.0),
            "audit_key": r.secret("DMS_AUDIT_KEY"),
            "historian_uri": r.str("DMS_HISTORIAN_URI", None),
            "historian_flush_s": r.float("DMS_HISTORIAN_FLUSH_S", 10.0, minimum=0.05),
            "historian_retention_days": r.int("DMS_HISTORIAN_RETENTION_DAYS", 400, minimum=1),
            "timezone": _timezone("DMS_TIMEZONE", r.str("DMS_TIMEZONE", "UTC") or "UTC"),
            "reliability_momentary_min": r.float("DMS_RELIABILITY_MOMENTARY_MIN", 5.0, minimum=0.0),
            "reports_dir": r.str("DMS_REPORTS_DIR", None),
            "report_scheduler": r.bool("DMS_REPORT_SCHEDULER", True),
            "forecast_holidays_country": _country("DMS_FORECAST_HOLIDAYS_COUNTRY",
                                                  r.str("DMS_FORECAST_HOLIDAYS_COUNTRY", "US") or "US"),
        }
        if values["log_level"] not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
            raise ConfigError(
                f"DMS_LOG_LEVEL={values['log_level']!r} is not a log level; use DEBUG, INFO, WARNING or ERROR"
            )
        if bool(values["tls_cert_file"]) != bool(values["tls_key_file"]):
            raise ConfigError("DMS_TLS_CERT_FILE and DMS_TLS_KEY_FILE must be set together (or neither)")
        known = {f.name for f in fields(cls)}
        for key, value in overrides.items():
            if key not in known:
                raise ConfigError(f"unknown setting {key!r}")
            values[key] = Path(value) if key == "data_dir" and value is not None else value  # type: ignore[arg-type]
        return cls(**values)  # type: ignore[arg-type]

    def fdir_mode_of(self, feeder_id: str) -> str:
        return dict(self.fdir_modes).get(feeder_id, self.fdir_mode)

    @property
    def embedded_store(self) -> bool:
        return self.neo4j_uri is None

    @property
    def reports_root(self) -> Path:
        return Path(self.reports_dir) if self.reports_dir else (self.data_dir / "reports").absolute()

    @property
    def historian_root(self) -> str:
        return self.historian_uri or str((self.data_dir / "historian").absolute())


def _timezone(name: str, value: str) -> str:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(f"{name}={value!r} is not an IANA time zone; use e.g. UTC or Europe/Berlin") from None
    return value


_FDIR_MODES = ("AUTOMATIC", "ADVISORY", "OFF")


def _fdir_mode(name: str, value: str) -> str:
    mode = value.strip().upper()
    if mode not in _FDIR_MODES:
        raise ConfigError(f"{name}={value!r} is not an FDIR mode; use one of {', '.join(_FDIR_MODES)}")
    return mode


def _fdir_modes(items: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    out = []
    for item in items:
        feeder, sep, mode = item.partition(":")
        if not sep or not feeder.strip():
            raise ConfigError(f"DMS_FDIR_MODES entry {item!r} is not FEEDER:MODE; e.g. case33bw:AUTOMATIC")
        out.append((feeder.strip(), _fdir_mode("DMS_FDIR_MODES", mode)))
    return tuple(out)


def _country(name: str, value: str) -> str:
    import holidays

    code = value.strip().upper()
    if code not in holidays.list_supported_countries():
        raise ConfigError(f"{name}={value!r} is not a country the holidays library knows; use an ISO 3166 code "
                          f"such as US, DE or FR")
    return code
