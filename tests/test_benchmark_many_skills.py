"""The many-skill composer benchmark times both ways of running the skills and restores
the library's threshold."""

import json

from benchmarks.many_skills import main
from library import composition


def test_many_skills_reports_both_ways_per_mode_and_leaves_the_threshold(capsys):
    before = composition.SKILL_BY_SKILL_ROWS
    main(["--json", "--skills", "2", "--batch", "16", "--rounds", "1", "--steps", "1"])
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [row["mode"] for row in rows] == ["noise", "action"]
    assert all(row["k"] == 3 and row["stacked"] > 0 and row["skill_by_skill"] > 0
               for row in rows)
    assert {row["default"] for row in rows} == {"stacked"}  # 16 rows: below the threshold
    assert composition.SKILL_BY_SKILL_ROWS == before
