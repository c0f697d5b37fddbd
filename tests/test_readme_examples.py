"""The README's code runs as printed: every block marked runnable runs as its own script, in an
empty directory, as a trader would paste it."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
MARK = "<!-- runnable"


def runnable_blocks() -> list[str]:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    return [b for b in blocks if MARK in b.split("\n", 1)[0]]


def test_the_readme_has_runnable_examples() -> None:
    assert len(runnable_blocks()) >= 1


@pytest.mark.parametrize("index", range(len(runnable_blocks())))
def test_a_readme_example_runs_as_printed(tmp_path: Path, index: int) -> None:
    script = tmp_path / f"example_{index}.py"
    script.write_text(runnable_blocks()[index])
    proc = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
