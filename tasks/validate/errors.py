"""What the validate stage raises, and where contract files and the files they name are looked up."""

from pathlib import Path
from typing import Any

from tasks.core import StageError

STAGE = "validate"
REPO_ROOT = Path(__file__).resolve().parents[2]


class ContractError(StageError):
    """A contract file that cannot be used (unknown rule, wrong type, missing field, missing labels file)."""


class ContractViolation(StageError):
    """A ``block`` rule failed. ``report`` holds the stage report as far as it got (rules table, artifacts)."""

    def __init__(self, message: str, report: dict[str, Any]):
        super().__init__(message)
        self.report = report
        self.report_uri: str | None = None


def display_path(path: Path) -> str:
    """``path`` relative to the working directory, else to the repository, else as given."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        try:
            return str(path.resolve().relative_to(REPO_ROOT))
        except ValueError:
            return str(path)


def resolve_path(path: str | Path) -> Path:
    """A path as given, else relative to the working directory, else relative to the repository."""
    p = Path(path).expanduser()
    if p.is_absolute() or p.exists():
        return p
    return REPO_ROOT / p
