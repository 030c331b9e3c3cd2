"""The recipe file's shape (pydantic, unknown fields are errors) and load-time error formatting.

```yaml
name: quickstart
seed: 0
max_quarantine_share: 0.05
stages:
  - id: data                      # a top-level stage: runs once, in <run>/data/
    kind: prepare_data
    inputs: {conversations: "path:posttrain/data/samples/conversations.jsonl"}
    config: {max_tokens: 512}
  - rounds: 2                     # a block repeated twice: <run>/round-1/sft/, <run>/round-2/sft/
    stages:
      - id: sft
        kind: sft
        inputs: {model: "prev/sft|path:posttrain/tinyworld/base_model", data: "data"}
```

The references an input may hold are described in `posttrain.recipe.refs`.
"""
from __future__ import annotations

from typing import Annotated, Any, Union

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError

# Ids name directories and appear in references, so they exclude '/', '|', ':' and dots.
STAGE_ID_PATTERN = r"^[A-Za-z_][A-Za-z0-9_-]*$"


class RecipeError(ValueError):
    """A recipe that cannot run; `errors` holds one line per problem, each starting with its path."""

    def __init__(self, source: str, errors: list[str]):
        self.source = source
        self.errors = list(dict.fromkeys(errors))  # keep order, drop repeats (a block's rounds repeat)
        lines = "\n".join(f"  - {err}" for err in self.errors)
        super().__init__(f"invalid recipe {source}:\n{lines}")


class StageSpec(BaseModel):
    """One stage as written: its id, kind, input references and config (validated per kind)."""

    model_config = ConfigDict(extra="forbid")
    id: str = Field(pattern=STAGE_ID_PATTERN, description="unique in its scope (top level or one rounds block)")
    kind: str = Field(description="a registered stage kind; `posttrain kinds` lists them")
    inputs: dict[str, Union[str, list[str]]] = Field(default_factory=dict, description="input name -> reference(s)")
    config: dict[str, Any] = Field(default_factory=dict, description="validated against the kind's Config")
    seed: int | None = Field(default=None, description="overrides the recipe seed for this stage")


class RoundsBlock(BaseModel):
    """Stages repeated `rounds` times; rounds are numbered across blocks (a second block goes on counting)."""

    model_config = ConfigDict(extra="forbid")
    rounds: int = Field(ge=1, description="how many times the block runs")
    stages: list[StageSpec] = Field(min_length=1)


def _item_tag(value: Any) -> str:
    """Route a `stages` item: a mapping with `rounds` is a block, anything else a stage."""
    return "rounds" if isinstance(value, dict) and "rounds" in value else "stage"


StageItem = Annotated[
    Union[Annotated[StageSpec, Tag("stage")], Annotated[RoundsBlock, Tag("rounds")]],
    Discriminator(_item_tag),
]


class Recipe(BaseModel):
    """A whole recipe file."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=STAGE_ID_PATTERN, description="names the run directory runs/<name>/")
    seed: int = 0
    max_quarantine_share: float = Field(default=0.05, ge=0.0, le=1.0)
    stages: list[StageItem] = Field(min_length=1)


def format_loc(loc: tuple[Any, ...]) -> str:
    """`('stages', 2, 'rounds', 'stages', 0, 'config', 'lr')` -> `stages[2].stages[0].config.lr`.

    The discriminator's tag ('stage'/'rounds') right after a list index is pydantic's, not the user's.
    """
    out = ""
    prev_was_index = False
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
            prev_was_index = True
            continue
        if prev_was_index and part in ("stage", "rounds"):
            prev_was_index = False
            continue
        out += f".{part}" if out else str(part)
        prev_was_index = False
    return out


def validation_errors(err: ValidationError, prefix: str = "") -> list[str]:
    """One `path: message` line per pydantic error, with `prefix` before the path."""
    lines = []
    for item in err.errors(include_url=False):
        loc = format_loc(tuple(item["loc"]))
        path = f"{prefix}.{loc}" if prefix and loc else (prefix or loc)
        lines.append(f"{path}: {item['msg']}")
    return lines
