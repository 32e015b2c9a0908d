"""The few named exceptions fedge raises; CLIs map them to one line and an exit code."""

from __future__ import annotations


class FedgeError(Exception):
    """Base of every error fedge raises on purpose. ``exit_code`` is what a CLI exits with."""

    exit_code = 1


class ConfigError(FedgeError):
    """A configuration file or option is invalid; the message names the file and field."""

    exit_code = 2


class WireError(FedgeError):
    """Bytes that are not a valid, supported, in-limit fedge message."""

    exit_code = 3


class ProtocolError(FedgeError):
    """A well-formed message that is illegal here: wrong stage, replay, unknown device, bad shape."""

    exit_code = 4


class SecurityError(FedgeError):
    """A signature, MAC or consistency check failed. Deliberately opaque: no detail leaks."""

    exit_code = 5


class RoundFailed(FedgeError):
    """A round cannot complete; the message names the stage and the counts."""

    exit_code = 6


class BudgetExhausted(FedgeError):
    """A privacy budget is spent: the device or campaign must not contribute again."""

    exit_code = 7


class TrainingError(FedgeError):
    """A model cannot be loaded or trained, or the local data does not fit it."""

    exit_code = 8


class TransportError(FedgeError):
    """The broker cannot be reached, refused us, or did not acknowledge in time."""

    exit_code = 9
