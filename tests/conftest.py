"""Shared fixtures as pytest plugins: brokers (a real Mosquitto, with passwords or TLS, and the
embedded broker) and isolated CLI logging. Tests use them by name, without importing them."""

pytest_plugins = ["tests.mqtt_fixtures", "tests.cli_fixtures"]
