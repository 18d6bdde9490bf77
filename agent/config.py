"""The agent's settings: one pydantic-settings model, the only place that reads the environment.

Precedence, highest first: constructor arguments, environment variables (``ANOMALY_AGENT_`` + the
key path joined by ``__``, e.g. ``ANOMALY_AGENT_KAFKA__BOOTSTRAP_SERVERS``), files in the secrets
directory (``$CREDENTIALS_DIRECTORY`` under systemd, one file per setting named like the
environment variable), the TOML file, then defaults. Components get plain typed values from here
and never read the environment themselves.
"""

from __future__ import annotations

import json
import os
import re
import tomllib
from enum import StrEnum
from pathlib import Path
from typing import Any, ClassVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

ENV_PREFIX = "ANOMALY_AGENT_"

# sysexits.h EX_CONFIG: what systemd and operators expect from a daemon refusing its config.
EXIT_CONFIG = 78


class Delivery(StrEnum):
    EXACTLY_ONCE = "exactly_once"
    AT_LEAST_ONCE = "at_least_once"


class EventFormat(StrEnum):
    JSON = "json"
    TEXT = "text"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class KafkaSettings(_Section):
    bootstrap_servers: str = "127.0.0.1:9092"
    group_id: str = "anomaly-agent"
    client_id: str = "anomaly-agent"
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_ca_location: Path | None = None
    ssl_certificate_location: Path | None = None
    ssl_key_location: Path | None = None
    ssl_key_password: SecretStr | None = None
    session_timeout_ms: int = Field(default=45_000, ge=1_000)
    max_poll_interval_ms: int = Field(default=300_000, ge=10_000)
    transaction_timeout_ms: int = Field(default=60_000, ge=1_000)
    # Static group membership (KIP-345, ``group.instance.id`` = ``instance_id``): a restarted
    # instance gets its partitions back at once instead of after a rebalance. None = on exactly
    # when ``instance_id`` is set explicitly (a host name default may not be stable).
    static_membership: bool | None = None
    # Anything librdkafka understands that we don't model, passed through verbatim to the
    # consumer and producer (e.g. {"socket.keepalive.enable": "true"}).
    librdkafka: dict[str, str | int | float | bool] = Field(default_factory=dict)

    def client_config(self) -> dict[str, Any]:
        """librdkafka properties shared by the consumer and the producer, secrets revealed."""
        conf: dict[str, Any] = {
            "bootstrap.servers": self.bootstrap_servers,
            "client.id": self.client_id,
            "security.protocol": self.security_protocol,
        }
        optional = {
            "sasl.mechanism": self.sasl_mechanism,
            "sasl.username": self.sasl_username,
            "sasl.password": self.sasl_password.get_secret_value() if self.sasl_password else None,
            "ssl.ca.location": self.ssl_ca_location,
            "ssl.certificate.location": self.ssl_certificate_location,
            "ssl.key.location": self.ssl_key_location,
            "ssl.key.password": self.ssl_key_password.get_secret_value() if self.ssl_key_password else None,
        }
        conf.update({k: str(v) for k, v in optional.items() if v is not None})
        conf.update(self.librdkafka)
        return conf

    def explicit_message_max_bytes(self) -> int | None:
        """``message.max.bytes`` from the pass-through, when the operator set it."""
        raw = self.librdkafka.get("message.max.bytes")
        if raw is None:
            return None
        try:
            return int(raw)
        except (TypeError, ValueError):
            raise ValueError(
                f"kafka.librdkafka['message.max.bytes'] must be an integer, got {raw!r}"
            ) from None


class GroupBy(StrEnum):
    """``alerts.group_by``: one alert per pattern and cooldown window, or one per anomalous event."""

    PATTERN = "pattern"
    EVENT = "event"


class TopicSettings(_Section):
    input: list[str] = Field(default_factory=lambda: ["events"], min_length=1)
    alerts: str = "anomaly-alerts"
    dead_letter: str = "anomaly-dead-letter"
    # Alert grouping's compacted changelog (``alerts.group_by = "pattern"``); default "<alerts>.groups".
    groups: str | None = Field(default=None, min_length=1)
    # Operator verdicts per pattern (compacted; optional): a pattern marked normal stops alerting.
    feedback: str | None = Field(default=None, min_length=1)

    def groups_topic(self) -> str:
        return self.groups if self.groups is not None else f"{self.alerts}.groups"


class ModelSettings(_Section):
    bundle: Path = Path("/var/lib/anomaly-agent/bundle")
    # Poll the bundle directory for a new manifest and hot-swap it (SIGHUP always works too).
    watch: bool = True
    watch_interval_seconds: float = Field(default=5.0, gt=0)
    intra_op_threads: int = Field(default=0, ge=0, description="0 = onnxruntime's default")


# librdkafka's default producer ``message.max.bytes``: no record larger than this can be produced.
LIBRDKAFKA_MESSAGE_MAX_BYTES = 1_000_000
# What a dead-letter copy may add to the largest accepted value: the original key and headers
# (as far as they fit) and the agent's dlq.* headers.
DEAD_LETTER_HEADROOM_BYTES = 16_384


class EventSettings(_Section):
    format: EventFormat = EventFormat.JSON
    text_field: str = "text"
    # Larger values are dead-lettered unread (``too_large``). Default: 960 KiB, so that the
    # dead-letter copy of the largest accepted value fits librdkafka's default message.max.bytes
    # and a topic's default max.message.bytes whole.
    max_bytes: int = Field(default=983_040, ge=1)


class BatchSettings(_Section):
    # Measured (bench/replay.py --mode sweep, docs/agent.md "Performance"): with patterns most
    # records cost ~30 µs, so a batch is cheap and its transaction commit (~5 ms) dominates
    # unless it is amortised over many records; 1024 gave 2.1x the events/s of 64 on real logs.
    # A short wait keeps latency low at moderate rates; a backlog fills batches at once.
    max_size: int = Field(default=1_024, ge=1, le=10_000)
    max_wait_ms: int = Field(default=50, ge=1)


class PatternSettings(_Section):
    # Score each distinct prepared text once (agent/model/patterns.py); off = embed every event.
    enabled: bool = True
    # Patterns kept per model, least recently used evicted first (~500 bytes each).
    max_entries: int = Field(default=100_000, ge=1)


class AlertSettings(_Section):
    text_max_chars: int = Field(default=1_000, ge=16)
    source_uri: str = "kafka-anomaly-agent"
    group_by: GroupBy = GroupBy.PATTERN
    # A pattern's first anomalous event on a partition alerts; the next ones within this many
    # seconds are counted and published as one summary when the window ends.
    cooldown_seconds: float = Field(default=600.0, gt=0)
    # Grouping states kept per input partition (least recently seen evicted first; an evicted
    # window's count is published as an early summary, never lost).
    max_groups: int = Field(default=100_000, ge=1)
    # Nearest training patterns in each alert (the bundle's examples; 0 = none).
    neighbours: int = Field(default=3, ge=0, le=10)


class RateSettings(_Section):
    """``[rates]``: per-pattern rates in event time; a known message surging (``spike``) or a steady
    one going silent (``silence``) alerts (docs/rates.md has the rule and how each default was
    measured)."""

    enabled: bool = Field(
        default=True, description="count every scored event per key and bucket; spike and silence alerts"
    )
    bucket_seconds: float = Field(
        default=60.0,
        gt=0,
        description="event-time bucket: boundaries are multiples of it on the Kafka timestamps",
    )
    key_fields: list[str] = Field(
        default_factory=list,
        description='event fields (dotted paths) that split a pattern\'s rate, e.g. ["service"]; '
        "the key is always (input partition, pattern) plus these",
    )
    max_keys: int = Field(
        default=100_000,
        ge=1,
        description="keys kept per input partition, least recently seen evicted (about 1.1 KB each "
        "with its example event: 100,000 keys are about 110 MB); eviction loses a baseline, never an alert",
    )
    warmup_seconds: float = Field(
        default=86_400.0,
        ge=0,
        description="event time a key learns before it may alert (one daily cycle); keys seeded by "
        "train --time-field alert at once",
    )
    fast_half_life_seconds: float = Field(
        default=3_600.0, gt=0, description="half-life of today's level (mean and variance per bucket)"
    )
    slow_half_life_seconds: float = Field(
        default=86_400.0, gt=0, description="half-life of the daily mean and of the key's records"
    )
    spike_alpha: float = Field(
        default=1e-6,
        gt=0,
        lt=1,
        description="a spike's count must be this improbable under Poisson at today's level",
    )
    min_count: int = Field(
        default=10, ge=1, description="a spike has at least this many events in its bucket"
    )
    min_ratio: float = Field(
        default=3.0, ge=1, description="a spike is at least this many times the expected count"
    )
    spike_margin: float = Field(
        default=1.5,
        ge=1,
        description="a spike exceeds the key's own busiest bucket (decaying over a day) this many times",
    )
    silence_alpha: float = Field(
        default=1e-6,
        gt=0,
        lt=1,
        description="a silence: no event for as many buckets as make P(no event) this small",
    )
    gap_margin: float = Field(
        default=2.0,
        ge=1,
        description="a silence is longer than the key's own longest gap (decaying over a day) this "
        "many times",
    )
    steady_within_seconds: float = Field(
        default=3_600.0,
        ge=0,
        description="a key is steady (may report silences) when its silence would be news within this time",
    )

    def bucket_ms(self) -> int:
        return max(1, round(self.bucket_seconds * 1000))


class SessionSettings(_Section):
    """``[sessions]``: events that share a session key (a block, a request, a job) are one
    session; a session whose steps go wrong alerts even when every line looks normal
    (docs/sessions.md). Needs a bundle with a session model (``train --session-key-pattern``)."""

    enabled: bool = Field(default=False, description="track sessions and alert on anomalous ones")
    key_pattern: str | None = Field(
        default=None,
        description="regex with one group, matched on the RAW text (before masking), e.g. "
        "'(blk_-?\\d+)'; exactly one of key_pattern and key_field",
    )
    key_field: str | None = Field(
        default=None, description="dotted event field holding the session id, e.g. 'trace_id'"
    )
    gap_seconds: float | None = Field(
        default=None,
        gt=0,
        description="event-time inactivity that closes a session; unset = the session model's (it "
        "was trained with it; another value stops start-up)",
    )
    max_seconds: float | None = Field(
        default=None,
        gt=0,
        description="a session closes this long after its first event; unset = the model's",
    )
    max_events: int | None = Field(
        default=None, ge=1, description="a session closes at this many events; unset = the model's"
    )
    max_open: int = Field(
        default=100_000,
        ge=1,
        description="open sessions per input partition (about 1.5 KB each: 100,000 are about 150 MB); "
        "beyond it the least recently active is closed and scored early (reason evicted)",
    )
    max_runs: int = Field(
        default=32, ge=1, description="pattern runs a session keeps for its alert (the rest are counted)"
    )

    @model_validator(mode="after")
    def _one_key(self) -> SessionSettings:
        if self.enabled and (self.key_pattern is None) == (self.key_field is None):
            raise ValueError(
                "sessions.enabled needs exactly one of sessions.key_pattern and sessions.key_field"
            )
        if self.key_pattern is not None:
            try:
                compiled = re.compile(self.key_pattern)
            except re.error as exc:
                raise ValueError(f"sessions.key_pattern does not compile: {exc}") from None
            if compiled.groups != 1:
                raise ValueError(f"sessions.key_pattern must have exactly one group, has {compiled.groups}")
        return self


# The kinds of alert beside anomalous events, and their default Alertmanager alertname.
DEFAULT_ALERTNAMES = {
    "spike": "TextPatternSpike",
    "silence": "TextPatternSilence",
    "session": "TextSessionAnomaly",
}


class AlertmanagerSettings(_Section):
    # Alertmanager base URL (e.g. http://alertmanager:9093); empty = no Alertmanager.
    url: str = ""
    # Event fields copied into the Alertmanager labels (bounded values only, e.g. "service").
    label_fields: list[str] = Field(default_factory=list)
    alertname: str = Field(default="TextAnomaly", min_length=1)
    # alertname of the other kinds of alert (a summary takes the kind of its window's alerts);
    # the kinds not named keep their default.
    alertnames: dict[str, str] = Field(default_factory=lambda: dict(DEFAULT_ALERTNAMES))
    queue_size: int = Field(default=10_000, ge=1)
    timeout_seconds: float = Field(default=5.0, gt=0)

    @field_validator("alertnames")
    @classmethod
    def _known_kinds(cls, value: dict[str, str]) -> dict[str, str]:
        unknown = sorted(set(value) - set(DEFAULT_ALERTNAMES))
        if unknown:
            raise ValueError(f"unknown kind(s) {unknown}; the kinds are {sorted(DEFAULT_ALERTNAMES)}")
        if not all(name.strip() for name in value.values()):
            raise ValueError("an alertname must not be empty")
        return DEFAULT_ALERTNAMES | value


class MetricsSettings(_Section):
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(default=9464, ge=0, le=65535)


class HealthSettings(_Section):
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    # /healthz fails when the loop has not completed an iteration for this long.
    stall_seconds: float = Field(default=60.0, gt=0)


class LifecycleSettings(_Section):
    shutdown_grace_seconds: float = Field(default=20.0, gt=0)
    # Exit non-zero when the broker has been unreachable this long (0 = retry forever).
    broker_unavailable_exit_seconds: float = Field(default=300.0, ge=0)


class Settings(BaseSettings):
    """Everything an operator configures; see README "Configuration" for the TOML form."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        case_sensitive=False,
    )
    # Set per instance by ``load_settings``; a ClassVar so pydantic does not treat it as a field.
    _toml_file: ClassVar[Path | None] = None
    _secrets_dir: ClassVar[Path | None] = None

    delivery: Delivery = Delivery.EXACTLY_ONCE
    instance_id: str = Field(default_factory=lambda: os.uname().nodename)
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    topics: TopicSettings = Field(default_factory=TopicSettings)
    model: ModelSettings = Field(default_factory=ModelSettings)
    events: EventSettings = Field(default_factory=EventSettings)
    batch: BatchSettings = Field(default_factory=BatchSettings)
    patterns: PatternSettings = Field(default_factory=PatternSettings)
    alerts: AlertSettings = Field(default_factory=AlertSettings)
    rates: RateSettings = Field(default_factory=RateSettings)
    sessions: SessionSettings = Field(default_factory=SessionSettings)
    alertmanager: AlertmanagerSettings = Field(default_factory=AlertmanagerSettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    health: HealthSettings = Field(default_factory=HealthSettings)
    lifecycle: LifecycleSettings = Field(default_factory=LifecycleSettings)
    log_level: str = "INFO"

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        level = value.upper()
        if level not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
            raise ValueError("must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL")
        return level

    @model_validator(mode="after")
    def _limits_consistent(self) -> Settings:
        """A record the agent accepts must be producible again as its dead-letter copy: otherwise
        the copy's transaction fails on every retry and the partition stalls."""
        limit = self.producer_message_max_bytes()
        if self.events.max_bytes + DEAD_LETTER_HEADROOM_BYTES > limit:
            raise ValueError(
                f"events.max_bytes ({self.events.max_bytes}) plus {DEAD_LETTER_HEADROOM_BYTES} bytes of "
                f"dead-letter headroom exceeds the producer's message.max.bytes ({limit}): a record the "
                "agent accepts could not be dead-lettered. Lower events.max_bytes to at most "
                f"{limit - DEAD_LETTER_HEADROOM_BYTES}, or raise kafka.librdkafka['message.max.bytes'] "
                "(or leave it unset: it then follows events.max_bytes)"
            )
        return self

    def producer_message_max_bytes(self) -> int:
        """The producer's ``message.max.bytes``: the operator's pass-through value, else large
        enough for the dead-letter copy of the largest accepted value (librdkafka's default
        1,000,000 at least)."""
        explicit = self.kafka.explicit_message_max_bytes()
        if explicit is not None:
            return explicit
        return max(LIBRDKAFKA_MESSAGE_MAX_BYTES, self.events.max_bytes + DEAD_LETTER_HEADROOM_BYTES)

    def static_membership(self) -> bool:
        """Whether the consumer joins with ``group.instance.id`` (see ``kafka.static_membership``)."""
        if self.kafka.static_membership is not None:
            return self.kafka.static_membership
        return "instance_id" in self.model_fields_set

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if cls._secrets_dir is not None:
            sources.append(_SecretsDirSource(settings_cls, cls._secrets_dir))
        if cls._toml_file is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=cls._toml_file))
        return tuple(sources)


class _SecretsDirSource(PydanticBaseSettingsSource):
    """Reads secrets from files named like their environment variable (systemd ``LoadCredential``).

    ``ANOMALY_AGENT_KAFKA__SASL_PASSWORD`` in the credentials directory sets
    ``kafka.sasl_password``: the same names operators already use for the environment.
    """

    def __init__(self, settings_cls: type[BaseSettings], directory: Path) -> None:
        super().__init__(settings_cls)
        self._directory = directory

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        raise NotImplementedError  # __call__ is overridden; pydantic-settings requires the method.

    def __call__(self) -> dict[str, Any]:
        values: dict[str, Any] = {}
        if not self._directory.is_dir():
            return values
        for path in sorted(self._directory.iterdir()):
            name = path.name
            if not name.upper().startswith(ENV_PREFIX) or not path.is_file():
                continue
            keys = name[len(ENV_PREFIX) :].lower().split("__")
            node = values
            for key in keys[:-1]:
                node = node.setdefault(key, {})
            node[keys[-1]] = path.read_text().strip()
        return values


class ConfigError(Exception):
    """A configuration the agent refuses to start with; the message names the bad field."""


def load_settings(
    config_file: Path | None = None,
    secrets_dir: Path | None = None,
    **overrides: Any,
) -> Settings:
    """Build the effective settings from the TOML file, secrets, environment and overrides.

    ``secrets_dir`` defaults to ``$CREDENTIALS_DIRECTORY`` when systemd sets it: the one
    environment read outside the ``ANOMALY_AGENT_`` prefix, because that is where systemd puts
    ``LoadCredential`` files.
    """
    if config_file is not None:
        if not config_file.is_file():
            raise ConfigError(f"config file {config_file}: not found or not a regular file")
        try:
            tomllib.loads(config_file.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {config_file}: invalid TOML: {exc}") from exc
    if secrets_dir is None and os.environ.get("CREDENTIALS_DIRECTORY"):
        secrets_dir = Path(os.environ["CREDENTIALS_DIRECTORY"])

    bound = type("Settings", (Settings,), {"_toml_file": config_file, "_secrets_dir": secrets_dir})
    try:
        settings: Settings = bound(**overrides)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, config_file)) from exc
    return settings


def _describe(exc: ValidationError, config_file: Path | None) -> str:
    where = f" in {config_file}" if config_file else ""
    lines = [f"invalid configuration{where}:"]
    for error in exc.errors():
        if not error["loc"]:  # a rule across several keys; its message names them
            lines.append(f"  {error['msg'].removeprefix('Value error, ')}")
            continue
        path = ".".join(str(part) for part in error["loc"])
        env = ENV_PREFIX + "__".join(str(part) for part in error["loc"]).upper()
        lines.append(f"  {path}: {error['msg']} (TOML key {path!r}, environment {env})")
    return "\n".join(lines)


def masked_dump(settings: Settings) -> dict[str, Any]:
    """The effective settings as plain JSON-able data with every secret shown as '**********'."""
    data: dict[str, Any] = settings.model_dump(mode="json")
    # SecretStr dumps as '**********' in JSON mode; librdkafka pass-through keys may hold secrets
    # too (e.g. sasl.oauthbearer.client.secret), so mask any key that looks like one.
    for key in list(data["kafka"]["librdkafka"]):
        if any(word in key for word in ("password", "secret", "token", "key")):
            data["kafka"]["librdkafka"][key] = "**********"
    return data


def explain(settings: Settings) -> str:
    """The effective settings as TOML (secrets masked), each key followed by its description where
    the model gives one: ``validate-config --explain``."""
    data = masked_dump(settings)
    lines: list[str] = []
    sections: list[tuple[str, BaseModel | None, dict[str, Any]]] = [("", None, {})]
    for name, value in data.items():
        if isinstance(value, dict) and isinstance(getattr(settings, name), BaseModel):
            sections.append((name, getattr(settings, name), value))
        else:
            sections[0][2][name] = value
    for name, model, values in sections:
        if name:
            doc = (type(model).__doc__ or "").strip().splitlines()
            lines += ["", f"[{name}]"] + [f"# {line.strip()}" for line in doc if line.strip()]
        fields = type(model).model_fields if model is not None else Settings.model_fields
        for key, value in values.items():
            description = fields[key].description if key in fields else None
            line = f"# {key} is not set" if value is None else f"{key} = {_toml(value)}"
            lines.append(line + (f"  # {description}" if description else ""))
    return "\n".join(lines).strip() + "\n"


def _toml(value: Any) -> str:
    """A JSON-dumped value written as TOML (strings, numbers, booleans, arrays, inline tables)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{json.dumps(str(k))} = {_toml(v)}" for k, v in value.items()) + " }"
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(str(value))
