"""`corral --version`, and a light start: the command line is built without aiohttp, numpy or pandas.

Start-up is checked by what gets imported, never by how long it takes.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import corral
from corral._version import __version__
from tests.conftest import ROOT
from tests.conftest import corral as corral_cli

HEAVY = ("aiohttp", "numpy", "pandas")


def _loaded_after(code: str) -> dict[str, list[str]]:
    """Run ``code`` in a fresh interpreter; which of HEAVY (and rich) it left in sys.modules."""
    script = (f"import sys\n{code}\n"
              "import json\n"
              "print(json.dumps({name: sorted(m for m in sys.modules if m.split('.')[0] == name)\n"
              f"                  for name in {HEAVY + ('rich',)!r}}}))\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("flag", ["--version", "-V"])
def test_version_flag_prints_the_version_and_exits_0(flag: str) -> None:
    proc = corral_cli(flag)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"corral {__version__}\n"


def test_import_corral_loads_no_engine() -> None:
    loaded = _loaded_after("import corral\ncorral.__version__, corral.UsageError")
    assert {name: loaded[name] for name in HEAVY} == {name: [] for name in HEAVY}


def test_building_every_help_page_loads_no_engine_and_no_rich() -> None:
    code = (
        "import contextlib, io\n"
        "import typer\n"
        "import corral.cli\n"
        "from corral.cli import main\n"
        "corral.cli._register()\n"
        "def paths(cmd, path=()):\n"
        "    yield path\n"
        "    for name, sub in getattr(cmd, 'commands', {}).items():\n"
        "        yield from paths(sub, (*path, name))\n"
        "for path in paths(typer.main.get_command(corral.cli.app)):\n"
        "    with contextlib.redirect_stdout(io.StringIO()) as out:\n"
        "        try:\n"
        "            main([*path, '--help'])\n"
        "        except SystemExit as exc:\n"
        "            assert exc.code in (0, None), (path, exc.code)\n"
        "    assert 'Usage: corral' in out.getvalue(), path\n"
    )
    loaded = _loaded_after(code)
    assert loaded == {name: [] for name in (*HEAVY, "rich")}


def test_every_public_name_still_resolves() -> None:
    """The lazy ``__getattr__`` finds every name of ``__all__``, and caches what it found."""
    for name in corral.__all__:
        assert getattr(corral, name) is not None, name
    assert "analyze_file" in corral.__all__ and "analyze_file_async" in corral.__all__
    assert callable(corral.agreement)  # the function, not the corral.tables.agreement module
    assert set(corral.__all__) <= set(dir(corral))
    with pytest.raises(AttributeError):
        corral.no_such_name  # noqa: B018


def test_serve_port_default_matches_the_fleet_default() -> None:
    """The CLI keeps corral.serve out of start-up, so it states the first port itself."""
    from corral import serve
    from corral.cli import serve as serve_cli

    assert serve_cli.FIRST_PORT == serve.DEFAULT_BASE_PORT
