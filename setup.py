"""Packages only (metadata lives in pyproject.toml): the repository's folders under one name, ``fedge``."""

from setuptools import find_packages, setup

FOLDERS = ("agent", "coordinator", "simulations")

#: The shipped device profiles (firmware_configs/*.toml, trial/, cluster/) as package data of ``fedge.profiles``,
#: where the demo and fedge-sim find them outside a checkout (agent/core/profiles.py, shipped_profiles()).
PROFILES = {
    "fedge.profiles": "firmware_configs",
    "fedge.profiles.trial": "firmware_configs/trial",
    "fedge.profiles.cluster": "firmware_configs/cluster",
}

setup(
    packages=[f"fedge.{p}" for p in find_packages(include=[f"{f}*" for f in FOLDERS])] + list(PROFILES),
    package_dir={**{f"fedge.{f}": f for f in FOLDERS}, **PROFILES},
)
