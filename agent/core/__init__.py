"""Protocol core shared by agent, coordinator and simulation.

Everything here must run on the most constrained device: it imports only the agent's
dependencies (numpy, pynacl, msgpack, paho-mqtt, sqlite-utils; not `cryptography` nor `dp-accounting`),
never coordinator- or simulation-only packages.
"""
