"""Shared fixtures as pytest plugins: brokers (a real Mosquitto, with passwords or TLS, and the
embedded broker) and isolated CLI logging. Tests use them by name, without importing them.

Hypothesis runs derandomized (its examples follow from each test, the same on every run and every
machine), with no per-example deadline (a loaded CI machine is not a failing property) and no example
database: a property test passes or fails the same way in CI as here. ``HYPOTHESIS_PROFILE=explore``
draws fresh random examples, to look for new failures on purpose."""

import os

from hypothesis import settings

settings.register_profile("fedge", derandomize=True, deadline=None, database=None)
settings.register_profile("explore", deadline=None, max_examples=500)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "fedge"))

pytest_plugins = ["tests.mqtt_fixtures", "tests.cli_fixtures"]
