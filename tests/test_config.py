"""The settings contract: the operators' TOML, env twins, secrets, and refusal of bad config."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.cli import main
from agent.config import EXIT_CONFIG, ConfigError, Delivery, EventFormat, load_settings, masked_dump

# Verbatim from issue 4 ("Configuration operators write"): this must keep working.
OPERATOR_TOML = """
delivery = "exactly_once"            # or "at_least_once"
[kafka]
bootstrap_servers = "127.0.0.1:9092"
group_id = "anomaly-agent"
[topics]
input = ["events"]
alerts = "anomaly-alerts"
dead_letter = "anomaly-dead-letter"
[model]
bundle = "/var/lib/anomaly-agent/bundle"
[events]
format = "json"                      # or "text": the whole payload is the text
text_field = "text"                  # with format = "json": the field (dotted path) holding the text
max_bytes = 1048576
[metrics]
host = "127.0.0.1"
port = 9464
[health]
port = 8080
"""


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("ANOMALY_AGENT_") or name == "CREDENTIALS_DIRECTORY":
            monkeypatch.delenv(name)


@pytest.fixture
def operator_toml(tmp_path: Path) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(OPERATOR_TOML)
    return path


def test_operator_toml_loads(operator_toml: Path) -> None:
    s = load_settings(operator_toml)
    assert s.delivery is Delivery.EXACTLY_ONCE
    assert s.kafka.bootstrap_servers == "127.0.0.1:9092"
    assert s.topics.input == ["events"]
    assert s.topics.dead_letter == "anomaly-dead-letter"
    assert s.model.bundle == Path("/var/lib/anomaly-agent/bundle")
    assert s.events.format is EventFormat.JSON
    assert s.events.max_bytes == 1_048_576
    assert (s.metrics.host, s.metrics.port, s.health.port) == ("127.0.0.1", 9464, 8080)


def test_environment_overrides_every_level(operator_toml: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANOMALY_AGENT_DELIVERY", "at_least_once")
    monkeypatch.setenv("ANOMALY_AGENT_KAFKA__BOOTSTRAP_SERVERS", "broker:9093")
    monkeypatch.setenv("ANOMALY_AGENT_TOPICS__INPUT", '["a", "b"]')
    monkeypatch.setenv("ANOMALY_AGENT_KAFKA__LIBRDKAFKA", '{"socket.keepalive.enable": "true"}')
    s = load_settings(operator_toml)
    assert s.delivery is Delivery.AT_LEAST_ONCE
    assert s.kafka.bootstrap_servers == "broker:9093"
    assert s.topics.input == ["a", "b"]
    # A key the TOML set but the environment did not stays from the TOML.
    assert s.topics.alerts == "anomaly-alerts"
    assert s.kafka.client_config()["socket.keepalive.enable"] == "true"


def test_secrets_are_masked_and_passed_to_librdkafka(tmp_path: Path) -> None:
    s = load_settings(
        None,
        kafka={
            "security_protocol": "SASL_SSL",
            "sasl_mechanism": "SCRAM-SHA-512",
            "sasl_username": "agent",
            "sasl_password": "hunter2",
            "librdkafka": {"sasl.oauthbearer.client.secret": "s3cret"},
        },
    )
    dumped = json.dumps(masked_dump(s))
    assert "hunter2" not in dumped and "s3cret" not in dumped
    conf = s.kafka.client_config()
    assert conf["sasl.password"] == "hunter2"
    assert conf["sasl.mechanism"] == "SCRAM-SHA-512"
    assert "ssl.ca.location" not in conf


def test_credentials_directory_supplies_secrets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "ANOMALY_AGENT_KAFKA__SASL_PASSWORD").write_text("from-systemd\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    s = load_settings(None)
    assert s.kafka.sasl_password is not None
    assert s.kafka.sasl_password.get_secret_value() == "from-systemd"
    # The environment still wins over a credential file.
    monkeypatch.setenv("ANOMALY_AGENT_KAFKA__SASL_PASSWORD", "from-env")
    s = load_settings(None)
    assert s.kafka.sasl_password is not None
    assert s.kafka.sasl_password.get_secret_value() == "from-env"


@pytest.mark.parametrize(
    ("toml", "field"),
    [
        ('delivery = "twice"', "delivery"),
        ("[batch]\nmax_size = 0", "batch.max_size"),
        ("[kafka]\nbootstrap_server = 'typo:9092'", "kafka.bootstrap_server"),
        ("[events]\nformat = 'xml'", "events.format"),
        ("[topics]\ninput = []", "topics.input"),
    ],
)
def test_bad_config_names_the_field(tmp_path: Path, toml: str, field: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError, match=rf"\b{field}\b"):
        load_settings(path)


def test_invalid_toml_and_missing_file_are_config_errors(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text("[kafka\nbootstrap_servers = 1")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_settings(path)
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "absent.toml")


def test_validate_config_cli(operator_toml: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate-config", str(operator_toml)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["topics"]["alerts"] == "anomaly-alerts"

    bad = tmp_path / "bad.toml"
    bad.write_text("[metrics]\nport = 70000")
    assert main(["validate-config", str(bad)]) == EXIT_CONFIG
    err = capsys.readouterr().err
    assert "metrics.port" in err and "ANOMALY_AGENT_METRICS__PORT" in err


def test_max_bytes_inconsistent_with_an_explicit_message_max_bytes_is_refused() -> None:
    """The fault that stalled a partition: a value the agent accepts whose dead-letter copy the
    producer can never send. An explicit message.max.bytes too small for events.max_bytes is a
    start-up error naming both keys; left unset, message.max.bytes follows events.max_bytes."""
    with pytest.raises(ConfigError) as info:
        load_settings(events={"max_bytes": 1_048_576}, kafka={"librdkafka": {"message.max.bytes": 1_000_000}})
    message = str(info.value)
    assert "events.max_bytes (1048576)" in message and "message.max.bytes (1000000)" in message
    assert "at most 983616" in message
    assert load_settings(events={"max_bytes": 1_048_576}).producer_message_max_bytes() == 1_064_960
    assert load_settings().events.max_bytes + 16_384 <= 1_000_000, "the defaults agree with librdkafka's"


def test_validate_config_explain_is_toml_that_gives_the_same_settings(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``validate-config --explain``: every effective key as TOML with what it does; read back,
    it is the same configuration (secrets aside, which it masks)."""
    config = tmp_path / "agent.toml"
    config.write_text('[rates]\nkey_fields = ["service"]\nbucket_seconds = 30\n[topics]\ninput = ["a"]\n')
    assert main(["validate-config", "--explain", str(config)]) == 0
    explained = capsys.readouterr().out
    assert "[rates]" in explained and "min_count = 10  # a spike has at least this many events" in explained
    again = tmp_path / "again.toml"
    again.write_text(explained)
    assert masked_dump(load_settings(again)) == masked_dump(load_settings(config))
