"""Releases, rollouts, the fleet controller and the dashboard.

Never imports rounds/ or service/: a release moves whether or not a round runs.
"""
