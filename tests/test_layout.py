"""Package layout (design.md): `cycler/` imports as `cyclerd` and never shadows `cycler`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_cycler_folder_is_not_a_regular_package() -> None:
    # An __init__.py would make `import cycler` find our folder before matplotlib's cycler.
    assert (ROOT / "cycler").is_dir()
    assert not (ROOT / "cycler" / "__init__.py").exists()


def test_matplotlibs_cycler_wins_with_the_repository_first_on_sys_path() -> None:
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]);"
        "from cycler import cycler;"
        "c = cycler(color=['r', 'g']);"
        "assert len(c) == 2, c;"
        "import cyclerd.protocols;"
        "print(cycler.__module__)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(ROOT)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "cycler"


def test_subpackages_import_under_cyclerd() -> None:
    import cyclerd.drivers
    import cyclerd.protocols
    import cyclerd.simulators

    assert Path(cyclerd.protocols.__file__).resolve().parent == ROOT / "protocols"
    assert Path(cyclerd.drivers.__file__).resolve().parent == ROOT / "drivers"
    assert Path(cyclerd.simulators.__file__).resolve().parent == ROOT / "simulators"
