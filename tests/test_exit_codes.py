"""Exit codes: one per kind of failure, defined once, documented in the README."""

from __future__ import annotations

import re
from pathlib import Path

import mpfl.errors as errors
from mpfl.errors import PERMANENT, ExitCode, MpflError

README = Path(__file__).resolve().parent.parent / "README.md"


def _error_classes() -> list[type[MpflError]]:
    return [v for v in vars(errors).values()
            if isinstance(v, type) and issubclass(v, MpflError)]


def test_each_code_is_distinct_and_each_error_maps_to_one() -> None:
    values = [member.value for member in ExitCode.__members__.values()]
    assert len(values) == len(set(values))  # no alias hides a shared code
    for cls in _error_classes():
        assert cls.exit_code in set(values), cls
    # classes that add no meaning of their own (a wire error's kinds) share their parent's
    own = {cls.exit_code for cls in _error_classes()}
    assert own == set(values) - {ExitCode.OK}


def test_the_readme_documents_every_code_and_which_are_not_restarted() -> None:
    documented = {}
    for line in README.read_text().splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if line.startswith("| ") and len(cells) == 3 and re.fullmatch(r"\d+", cells[0]):
            documented[int(cells[0])] = cells[2]
    assert set(documented) == {int(c) for c in ExitCode} - {0}
    assert {code for code, restart in documented.items() if restart == "no"} == {
        int(c) for c in PERMANENT}
