"""Process entry points for the store's concurrency test (a module, so children can import it)."""

import torch

from library.errors import StoreError
from library.store import SkillStore


def skill_tensors(seed: int) -> dict[str, torch.Tensor]:
    """A small LoRA-shaped tensor dict whose values identify the writer by `seed`."""
    g = torch.Generator().manual_seed(seed)
    return {
        "net.0.lora_A.weight": torch.randn(8, 32, generator=g),  # [rank, d_in]
        "net.0.lora_B.weight": torch.randn(64, 8, generator=g),  # [d_out, rank]
    }


def register_together(uri: str, name: str, seed: int, start, results) -> None:
    """Wait at the `start` barrier with every other writer, register skill `name` on base
    "b0", and report (name, seed, error message or None)."""
    start.wait(timeout=60)
    try:
        SkillStore(uri).register(
            name, "skill", {"rank": 8, "seed": seed}, skill_tensors(seed), parent="b0"
        )
        results.put((name, seed, None))
    except StoreError as e:
        results.put((name, seed, str(e)))
