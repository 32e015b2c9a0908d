"""One transport interface for both sides: MQTT over paho, and an in-memory twin for simulation.

``from fedge.agent.core.transport import TransportConfig, open_transport`` — the factory picks the
implementation from the URL (``mqtt://``, ``mqtts://`` or ``memory://`` with a broker given).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fedge.agent.core.transport.base import Inbound, Transport, TransportConfig
from fedge.agent.core.transport.memory import InMemoryBroker, InMemoryTransport

if TYPE_CHECKING:
    from fedge.agent.core.transport.netloop import NetworkLoop

__all__ = ["Inbound", "InMemoryBroker", "InMemoryTransport", "Transport", "TransportConfig", "open_transport"]


def open_transport(
    config: TransportConfig, *, memory_broker: InMemoryBroker | None = None, network: NetworkLoop | None = None
) -> Transport:
    """An unconnected transport for ``config``: in memory for ``memory://``, else over paho, on its
    own network thread or on ``network`` (one :class:`~fedge.agent.core.transport.netloop.NetworkLoop`
    shared by many transports of one process)."""
    if config.broker_url.startswith("memory://"):
        if memory_broker is None:
            raise ValueError("a memory:// transport needs the InMemoryBroker to attach to")
        return InMemoryTransport(config, memory_broker)
    from fedge.agent.core.transport.mqtt import MqttTransport

    return MqttTransport(config, network=network)
