"""Packaging beyond pyproject.toml: the shipped models (`assets/` in the repository) install as package data.

In the wheel they are the data-only package `vistok.shipped` (`vistok/shipped/<model>/config.json`, ...); the loader
(`vistok/io/sources.py`) looks there first and beside the package second (a source checkout or an editable install), so
`vistok.load("cifar10-xar-tiny")` works either way. Everything else is declared in pyproject.toml.
"""

from setuptools import find_packages, setup

SHIPPED = ["*/*.json", "*/*.safetensors", "*/*/*.json", "*/*/*.safetensors", "fid_stats/*.npz"]

setup(
    packages=[*find_packages(include=["vistok", "vistok.*"]), "vistok.shipped"],
    package_dir={"vistok.shipped": "assets"},
    package_data={"vistok.shipped": SHIPPED},
)
