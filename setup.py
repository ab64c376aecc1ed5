"""Packaging hook; the metadata is in setup.cfg.

The Hydra configs stay in the repository's top-level ``conf/`` (where people edit them); a wheel or a
non-editable ``pip install .`` copies them into the package as ``fgbg/conf/``, where ``fgbg.utils.config``
finds them, so the console scripts work from any folder. Editable installs read ``conf/`` in place.
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

CONF = Path(__file__).resolve().parent / "conf"


class BuildPyWithConfigs(build_py):
    """``build_py`` that also ships ``conf/`` as the package data folder ``fgbg/conf/``."""

    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):  # editable: fgbg.utils.config reads the repository's conf/
            return
        target = Path(self.build_lib) / "fgbg" / "conf"
        shutil.copytree(CONF, target, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))


setup(cmdclass={"build_py": BuildPyWithConfigs})
