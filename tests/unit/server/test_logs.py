from __future__ import annotations

import json
import logging

from server.logs import configure_logging, correlation_id


def test_json_logs_carry_the_correlation_id(capsys):
    configure_logging("INFO", json_logs=True)
    token = correlation_id.set("abc123")
    try:
        logging.getLogger("dms.test").info("operate %s", "sw5")
    finally:
        correlation_id.reset(token)
    line = capsys.readouterr().err.strip().splitlines()[-1]
    record = json.loads(line)
    assert record["message"] == "operate sw5"
    assert record["correlation_id"] == "abc123"
    assert record["level"] == "INFO" and record["logger"] == "dms.test"
    logging.getLogger().handlers.clear()


def test_settings_never_render_secrets():
    from server.settings import Settings

    s = Settings.from_env({"DMS_NEO4J_PASSWORD": "hunter2-secret"})
    assert "hunter2-secret" not in repr(s) and "hunter2-secret" not in str(s)
    assert s.neo4j_password.reveal() == "hunter2-secret"


def test_bad_settings_name_variable_value_and_expectation():
    import pytest

    from graph_schema.errors import ConfigError
    from server.settings import Settings

    with pytest.raises(ConfigError, match=r"DMS_GRAPHIQL='maybe' is not a boolean"):
        Settings.from_env({"DMS_GRAPHIQL": "maybe"})
    with pytest.raises(ConfigError, match="DMS_TLS_CERT_FILE and DMS_TLS_KEY_FILE"):
        Settings.from_env({"DMS_TLS_CERT_FILE": "/x.pem"})
    with pytest.raises(ConfigError, match="DMS_NEO4J_PASSWORD_FILE"):
        Settings.from_env({"DMS_NEO4J_PASSWORD_FILE": "/nonexistent/pw"})
