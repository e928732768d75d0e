"""The many-skill composer benchmark times both ways of running the skills and restores
the library's threshold."""

import json

from benchmarks.many_skills import main
from library import composition


def test_many_skills_reports_both_ways_per_mode_and_leaves_the_threshold(capsys):
    before = composition.SKILL_BY_SKILL_ROWS
    main(["--json", "--skills", "2", "--batch", "16", "--rounds", "1", "--steps", "1",
          "--pool-states", "40", "--pool-draws", "2"])
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    ways, pool = rows[:2], rows[2]
    assert [row["mode"] for row in ways] == ["noise", "action"]
    assert all(row["k"] == 3 and row["stacked"] > 0 and row["skill_by_skill"] > 0
               for row in ways)
    assert {row["default"] for row in ways} == {"stacked"}  # 16 rows: below the threshold
    assert (pool["states"], pool["draws"], pool["k"]) == (40, 2, 3)
    assert pool["pool_seconds"] > 0 and pool["step_seconds"] > 0
    assert composition.SKILL_BY_SKILL_ROWS == before
