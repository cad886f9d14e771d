"""The layout of the code: the import contracts hold and can fail, and tests find their module.

Convention: the unit tests of ``imm/<a>/<b>.py`` live in ``tests/unit/test_<a>_<b>.py`` (more
files for one module add a suffix: ``test_<a>_<b>_<what>.py``); ``imm/<a>.py`` is tested in
``tests/unit/test_<a>.py``. ``python tests/unit/test_layout.py`` reports the modules that have
no unit test file yet, the ones no test imports at all, and the ones over 600 lines.
"""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
IMM = REPO / "imm"
UNIT = REPO / "tests" / "unit"
LINT_IMPORTS = str(Path(sys.executable).parent / "lint-imports")
# unit test files that test the code base as a whole, not one module
NOT_A_MODULE = {"test_layout.py"}
MAX_LINES = 600


@functools.cache
def modules() -> list[Path]:
    return sorted(p for p in IMM.rglob("*.py") if p.name != "__init__.py")


@functools.cache
def packages() -> list[Path]:
    """Sub-packages of imm (their ``__init__.py``), which may hold code of their own."""
    return sorted(p for p in IMM.rglob("__init__.py") if p.parent != IMM)


def unit_test_for(module: Path) -> Path:
    """``imm/rollout/plan.py`` -> ``tests/unit/test_rollout_plan.py``; a package's
    ``imm/plugins/cloud/__init__.py`` -> ``tests/unit/test_plugins_cloud.py``."""
    rel = module.relative_to(IMM)
    parts = rel.parent.parts if rel.name == "__init__.py" else rel.with_suffix("").parts
    return UNIT / f"test_{'_'.join(parts)}.py"


def module_for(test_file: Path) -> Path | None:
    """The module a unit test file belongs to: the longest module whose test name is the file's
    name or a prefix of it followed by ``_``."""
    stem = test_file.stem
    best: Path | None = None
    for m in [*modules(), *packages()]:
        name = unit_test_for(m).stem
        if (stem == name or stem.startswith(name + "_")) and (
                best is None or len(name) > len(unit_test_for(best).stem)):
            best = m
    return best


def test_the_convention_maps_paths_both_ways() -> None:
    assert unit_test_for(IMM / "rollout" / "plan.py") == UNIT / "test_rollout_plan.py"
    assert unit_test_for(IMM / "config.py") == UNIT / "test_config.py"
    assert unit_test_for(IMM / "plugins" / "providers" / "aws.py") == \
        UNIT / "test_plugins_providers_aws.py"
    assert module_for(UNIT / "test_audit_sweep.py") == IMM / "audit" / "sweep.py"
    assert module_for(UNIT / "test_audit_sweep_schedule.py") == IMM / "audit" / "sweep.py"
    assert module_for(UNIT / "test_store_sqlite.py") == IMM / "store" / "sqlite.py"
    assert module_for(UNIT / "test_nothing_here.py") is None
    assert unit_test_for(IMM / "plugins" / "cloud" / "__init__.py") == UNIT / "test_plugins_cloud.py"
    assert module_for(UNIT / "test_plugins_cloud.py") == IMM / "plugins" / "cloud" / "__init__.py"
    assert module_for(UNIT / "test_plugins_cloud_drivers.py") == IMM / "plugins" / "cloud" / "drivers.py"


def test_every_unit_test_file_names_its_module() -> None:
    orphans = [p.name for p in sorted(UNIT.glob("test_*.py"))
               if p.name not in NOT_A_MODULE and module_for(p) is None]
    assert not orphans, (f"unit test files that name no module under imm/: {orphans}; name "
                         "them tests/unit/test_<package>_<module>[_<what>].py")


# -- the import contracts (pyproject.toml [tool.importlinter]) -------------------------------

def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([LINT_IMPORTS, "--no-cache"], cwd=root, capture_output=True,
                          text=True, timeout=120)


@pytest.fixture
def tree_copy(tmp_path: Path) -> Path:
    shutil.copytree(IMM, tmp_path / "imm", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def test_the_import_contracts_hold() -> None:
    cp = lint_imports(REPO)
    assert cp.returncode == 0, cp.stdout + cp.stderr


@pytest.mark.parametrize(("module", "line", "broken"), [
    # a domain package reaching up to the daemon
    ("rollout/plan.py", "import imm.daemon.core", "The domain never imports the daemon"),
    # config reaching up to the daemon (AdminRule used to live there)
    ("config.py", "from imm.daemon import auth", "config never imports the daemon"),
    # a lower layer importing a higher one
    ("catalog/service.py", "import imm.plugins.base", "Layers"),
    # siblings: rollout and audit do not import each other
    ("audit/sweep.py", "import imm.rollout.states", "Layers"),
    # a circle inside a package
    ("cli/client.py", "from imm.cli import main", "No circles"),
])
def test_one_bad_import_breaks_a_contract(tree_copy: Path, module: str, line: str,
                                          broken: str) -> None:
    path = tree_copy / "imm" / module
    path.write_text(path.read_text() + f"\n{line}  # noqa\n")
    cp = lint_imports(tree_copy)
    assert cp.returncode != 0, cp.stdout
    broken_lines = [ln for ln in cp.stdout.splitlines() if ln.rstrip().endswith("BROKEN")]
    assert any(broken in ln for ln in broken_lines) or broken in cp.stdout.split(
        "Broken contracts")[-1], cp.stdout


# -- the report ------------------------------------------------------------------------------

def imported_by_tests() -> set[str]:
    """Dotted names of the imm modules some test or benchmark file imports."""
    names: set[str] = set()
    pattern = re.compile(r"^\s*(?:from\s+(imm(?:\.\w+)*)\s+import\s+([\w ,()]+)|"
                         r"import\s+(imm(?:\.\w+)*))", re.M)
    for f in [*(REPO / "tests").rglob("*.py"), *(REPO / "bench").rglob("*.py")]:
        for frm, what, imp in pattern.findall(f.read_text(errors="replace")):
            if imp:
                names.add(imp)
                continue
            names.add(frm)
            for item in re.split(r"[\s,()]+", what):
                if item and item != "as":
                    names.add(f"{frm}.{item}")
    return names


def report() -> str:
    dotted = {m: ".".join(("imm", *m.relative_to(IMM).with_suffix("").parts)) for m in modules()}
    no_unit = [str(m.relative_to(REPO)) for m in modules() if not any(
        module_for(t) == m for t in UNIT.glob("test_*.py"))]
    imported = imported_by_tests()
    never = [str(m.relative_to(REPO)) for m, name in dotted.items() if name not in imported]
    long = [f"{m.relative_to(REPO)} ({n} lines)" for m in modules()
            if (n := len(m.read_text().splitlines())) > MAX_LINES]
    return "\n".join([
        f"modules without a unit test file ({len(no_unit)}):", *("  " + m for m in no_unit),
        f"modules no test or benchmark imports ({len(never)}):", *("  " + m for m in never),
        f"modules over {MAX_LINES} lines ({len(long)}):", *("  " + m for m in long)])


def test_the_report_names_a_module_without_tests() -> None:
    text = report()
    assert text.startswith("modules without a unit test file")
    assert "imm/plugins/base.py" not in text.split("modules no test")[0]  # it has its test


if __name__ == "__main__":
    print(report())
