"""Protocol core shared by agent, coordinator and simulation.

Everything here must run on the most constrained device: it imports only the agent's
dependencies (numpy, cryptography, pynacl, msgpack, paho-mqtt, sqlite-utils, dp-accounting),
never coordinator- or simulation-only packages.
"""
