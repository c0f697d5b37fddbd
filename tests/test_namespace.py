"""One import namespace: nothing installs top-level, and a caller's own folders shadow nothing.

A trader's project may well hold ``storage/``, ``tools/`` or ``capture/`` packages, or live in a
directory called ``ringtape``. The kernel script below runs from such a directory, as its own
process, and must open, append and seal a real run (writer and marker sidecar included): the
children start the same way whatever the caller's working directory or script directory.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

import ringtape
from ringtape.storage.read.reader import iter_entries
from ringtape.storage.run.manifest import read_manifest
from ringtape.storage.run.status import RunStatus

REPO = Path(__file__).resolve().parent.parent

KERNEL = textwrap.dedent(
    """
    import json, sys, uuid
    import ringtape
    import storage, tools, capture  # the caller's own packages, first on sys.path
    assert storage.MINE and tools.MINE and capture.MINE

    config = ringtape.EventStoreConfig(
        base_dir=sys.argv[1], data_markers=ringtape.DataMarkerConfig()
    )
    instance = uuid.uuid4()
    store = ringtape.EventStore(config, instance_id=instance)
    store.open(instance, ringtape.RegisteredComponents(), "live")
    for i in range(1000):
        store.append("events.order.submitted", b'{"n": %d}' % i, payload_type="json")
        store.observe_data("Quote", "AUD/USD.SIM", i, i)
    run_dir = store.run_dir()
    store.seal()
    print(json.dumps({"run_dir": str(run_dir), "halted": store.is_halted()}))
    """
)


def _shadowing_project(root: Path) -> Path:
    """A project directory holding its own capture/, storage/ and tools/ packages."""
    root.mkdir(parents=True)
    for name in ("capture", "storage", "tools"):
        pkg = root / name
        pkg.mkdir()
        (pkg / "__init__.py").write_text("MINE = True\n")
        # Modules named like ringtape's: an import that went to the wrong package fails loudly.
        for module in ("entry", "writer", "child", "cli"):
            (pkg / f"{module}.py").write_text("raise ImportError('the caller\\'s module')\n")
    (root / "kernel.py").write_text(KERNEL)
    return root


def _run_kernel(project: Path, base: Path) -> dict[str, object]:
    proc = subprocess.run(
        [sys.executable, "kernel.py", str(base)],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    result: dict[str, object] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


@pytest.mark.parametrize("project_name", ["trader", "ringtape"])
def test_a_kernel_beside_its_own_storage_tools_and_capture_packages_runs(
    tmp_path: Path, project_name: str
) -> None:
    project = _shadowing_project(tmp_path / project_name)
    result = _run_kernel(project, tmp_path / "runs")
    assert result["halted"] is False
    run_dir = Path(str(result["run_dir"]))
    assert read_manifest(run_dir).status is RunStatus.ENDED
    entries = list(iter_entries(run_dir))
    assert [e.seq for e in entries] == list(range(1, 1003))  # RunStarted, 1000, RunEnded
    assert entries[500].payload == b'{"n": 499}'
    assert list(run_dir.glob("markers-*.seg")), "the marker sidecar wrote nothing"


def test_the_package_exposes_the_kernel_api_and_a_version() -> None:
    assert ringtape.__version__
    names = ("EventStore", "event_store_factory", "StoreOptions", "EventStoreConfig")
    for name in (*names, "RetentionMode", "StoreHalted", "HaltReason", "Environment"):
        assert getattr(ringtape, name) is not None, name
    with pytest.raises(AttributeError):
        ringtape.NoSuchThing  # noqa: B018


def test_nothing_but_ringtape_is_importable_from_elsewhere() -> None:
    """From ``/`` (no checkout on the path) only ``ringtape`` is there, not its sub-packages."""
    code = (
        "import importlib.util as u, json;"
        "print(json.dumps([n for n in ('capture', 'storage', 'tools', 'ringtape')"
        " if u.find_spec(n)]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd="/", capture_output=True, text=True, check=True
    )
    assert json.loads(out.stdout) == ["ringtape"]


@pytest.mark.slow
def test_the_wheel_installs_nothing_outside_the_ringtape_package(tmp_path: Path) -> None:
    """Build the wheel (from a copy: a build writes into its source tree) and list it."""
    source = tmp_path / "src"
    shutil.copytree(
        REPO, source, ignore=shutil.ignore_patterns(".*", "build", "*.egg-info", "__pycache__")
    )
    command = [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps"]
    subprocess.run(
        [*command, "--wheel-dir", str(tmp_path), str(source)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("ringtape-*.whl")
    tops = {name.split("/", 1)[0] for name in zipfile.ZipFile(wheel).namelist()}
    assert tops == {"ringtape", f"ringtape-{ringtape.__version__}.dist-info"}, tops
    assert "ringtape/storage/FORMAT.md" in zipfile.ZipFile(wheel).namelist()


def test_version_from_the_command_line() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "ringtape.tools.cli", "--version"],
        cwd="/",
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == f"ringtape {ringtape.__version__}"


@pytest.mark.parametrize("argv", [["--help"], ["verify", "--help"], ["inspect", "--help"]])
def test_help_imports_no_command_work(argv: list[str]) -> None:
    """``ringtape --help`` builds every subcommand's parser from tools/arguments.py alone: no
    benchmark, no numpy, no rich (what made it take over a second under load)."""
    code = (
        "import sys, json\n"
        "from ringtape.tools.cli import main\n"
        f"code = main({argv!r})\n"
        "work = ('ringtape.tools.bench', 'ringtape.tools.commands', 'ringtape.storage')\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('numpy', 'rich')"
        " or m.startswith(work))\n"
        "print(json.dumps([code, heavy]))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    status, heavy = json.loads(proc.stdout.strip().splitlines()[-1])
    assert status == 0 and heavy == [], heavy
