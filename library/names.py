"""The rule every stored item and every adapter name obeys.

Adapter names become `nn.ModuleDict` keys and folder names in the store, so they may not
contain '.' or '/', and they may not equal a word that appears in module paths: peft's
bugs #2252, #3282 and #3584 all came from adapter names colliding with module names or
key prefixes.
"""

import re

from library.errors import StoreError

NAME_PATTERN = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")

# "base" means "the frozen base alone" wherever a list of skills is given.
BASE = "base"
RESERVED = frozenset(
    {BASE, "lora_A", "lora_B", "lora", "base_layer", "base_model", "model", "weight", "bias",
     "default", "full_delta", "net", "normalizer"}
)


def check_name(name: object) -> str:
    """Return `name` if it may name a skill or stored item, else raise StoreError."""
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise StoreError(
            f"invalid name {name!r}: use a letter, then up to 63 letters, digits, '_' or '-'"
        )
    if name in RESERVED:
        raise StoreError(f"invalid name {name!r}: it is reserved ({', '.join(sorted(RESERVED))})")
    return name
