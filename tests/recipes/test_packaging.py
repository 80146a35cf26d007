"""The wheel carries the recipes and program.md, so `init` works from an installed package."""

import subprocess
import sys
import zipfile

import pytest


def test_wheel_ships_recipes_and_program(tmp_path):
    pytest.importorskip("hatchling")
    from pathlib import Path
    root = Path(__file__).resolve().parents[2]
    subprocess.run([sys.executable, "-m", "hatchling", "build", "-t", "wheel", "-d", str(tmp_path)], cwd=root,
                   check=True, capture_output=True)
    wheel = next(tmp_path.glob("autoresearch-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "autoresearch/_recipes/program.md" in names
    for recipe in ("tiny", "nanogpt"):
        for part in ("recipe.yaml", "train.py", "prepare.py"):
            assert f"autoresearch/_recipes/{recipe}/{part}" in names
    assert "autoresearch/cli.py" in names
    assert {f"autoresearch/execution/{name}.py" for name in ("__init__", "jobs", "local", "processes", "output", "steal",
                                                             "ray", "sandbox")} <= names
