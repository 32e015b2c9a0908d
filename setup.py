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

#: Folders of package data only (no __init__.py, so find_packages skips them), named as packages so
#: setuptools ships their files (pyproject.toml's package-data) instead of warning that it would not:
#: the model zoo and the example layer specs with their built models (agent/models/, agent/models/specs/).
DATA_PACKAGES = ["fedge.agent.models", "fedge.agent.models.specs"]

setup(
    packages=[f"fedge.{p}" for p in find_packages(include=[f"{f}*" for f in FOLDERS])] + DATA_PACKAGES + list(PROFILES),
    package_dir={**{f"fedge.{f}": f for f in FOLDERS}, **PROFILES},
)
