"""Build hook only (metadata lives in pyproject.toml): ship the repository's ``conf/`` tree inside the
package as ``lmlab/conf`` so a non-editable install (``pip install .``, a wheel) composes configs from
any directory. conf/ stays at the repository root (train.py's ``config_path``); ``lmlab.config.CONF_DIR``
looks for the installed copy first, then for the repository's."""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

CONF = Path(__file__).resolve().parent / "conf"


class BuildPyWithConf(build_py):
    def run(self):
        super().run()
        if getattr(self, "editable_mode", False) or not CONF.is_dir():
            return  # an editable install reads the repository's conf/ directly
        dest = Path(self.build_lib) / "lmlab" / "conf"
        shutil.rmtree(dest, ignore_errors=True)
        shutil.copytree(CONF, dest, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))


setup(cmdclass={"build_py": BuildPyWithConf})
