"""Packages only (metadata lives in pyproject.toml): the repository's folders under one name, ``fedge``."""

from setuptools import find_packages, setup

FOLDERS = ("agent", "coordinator", "simulations")

setup(
    packages=[f"fedge.{p}" for p in find_packages(include=[f"{f}*" for f in FOLDERS])],
    package_dir={f"fedge.{f}": f for f in FOLDERS},
)
