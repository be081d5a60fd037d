"""A non-editable install ships the config tree: from outside the repository, ``lmlab.api`` composes
and trains with the installed package's ``lmlab/conf`` (setup.py's build hook copies conf/ there)."""

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_non_editable_install_composes_and_trains_from_anywhere(tmp_path, cache_dir):
    from conftest import TINY

    src = tmp_path / "src"  # a copy: pip builds in the source tree (build/, *.egg-info)
    src.mkdir()
    for name in ("pyproject.toml", "setup.py", "MANIFEST.in", "README.md"):
        shutil.copy(REPO / name, src / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(REPO / "lmlab", src / "lmlab", ignore=ignore)
    shutil.copytree(REPO / "conf", src / "conf", ignore=ignore)
    venv = tmp_path / "venv"
    # the system's packages (torch, hydra...) are visible; the system pip and setuptools build the wheel
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    subprocess.run([py, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", str(src)],
                   check=True, cwd=tmp_path, timeout=600)
    shutil.rmtree(src)  # nothing may be read from the source tree any more
    work = tmp_path / "elsewhere"
    work.mkdir()
    script = textwrap.dedent(f"""
        import lmlab, lmlab.config
        from lmlab.api import compose, train
        print(lmlab.__file__)
        print(lmlab.config.CONF_DIR)
        run = compose(*{TINY!r}, "trainer.max_steps=2", "out_dir=out", "cache_dir={cache_dir}")
        print("step", train(run, log=lambda *_: None)["step"])
    """)
    env = {k: v for k, v in __import__("os").environ.items() if k != "PYTHONPATH"}
    r = subprocess.run([py, "-c", script], cwd=work, capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    site = str(venv)
    lines = r.stdout.splitlines()
    assert lines[0].startswith(site) and lines[1] == str(Path(lines[0]).parent / "conf"), lines
    assert (Path(lines[1]) / "config.yaml").is_file() and lines[-1] == "step 2"
    assert list((work / "out").glob("*/summary.json"))
