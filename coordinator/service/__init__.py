"""The coordinator process: the only room with a loop, a transport or signals.

Service, config, pacing, enrollment, device reports, the campaign budget, broker, PKI, demo, CLI.
"""
