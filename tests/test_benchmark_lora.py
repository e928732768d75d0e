"""The LoRA-strength benchmark runs and reports every variant on the same footing."""

import json

from benchmarks.lora_strength import main


def test_lora_strength_reports_three_variants(capsys):
    main(["--json", "--quick"])
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    variants = [row["variant"] for row in rows]
    assert len(rows) == 3 and variants[-1] == "full fine-tuning"
    assert all(row["loss"] > 0 and row["steps"] == 20 for row in rows)
    lora, full = rows[1]["trained_params"], rows[2]["trained_params"]
    assert rows[0]["trained_params"] == lora and lora < full / 10
