"""One round as pure code: plan, selection, engine, plain and secure aggregation, accounting, the builder.

Imports fedge.agent.core and itself only: no SQLite, no transport, no default clock.
"""
