"""References: how a stage's input names the artifacts it reads.

An input's value is a reference or a list of them (a list concatenates their artifacts). Forms:

- `ID`       stage ID of the current round, if declared earlier in this round's block; otherwise the
             top-level stage ID declared earlier.
- `prev/ID`  stage ID of the previous round.
- `rN/ID`    stage ID of round N (already run).
- `last/ID`  stage ID of the latest round that has one (after a rounds block: its final round).
- `all/ID`   every round's stage ID so far (rounds 1..current, those already declared), in order.
- `A|B`      the first alternative that resolves: `prev/sft|path:base_model` falls back in round 1.
- `path:P`   an external file or directory. A relative P is looked up in the current working directory
             first, then in the recipe file's directory; it must exist when the recipe loads.

A reference only ever sees stages declared before the one that uses it, so the graph has no cycles.
Rounds are numbered across rounds blocks: a second block continues from the first block's last round.
"""
from __future__ import annotations

import re
from pathlib import Path

from posttrain.recipe.plan import InputRef

_ROUND_REF = re.compile(r"^r(\d+)/(.+)$")


class Unresolved(ValueError):
    """An alternative that names nothing; the message says why."""


class Scope:
    """The stages declared so far, by (round, id); round 0 is the top level."""

    def __init__(self, base_dir: Path | None):
        self.base_dir = base_dir
        self.declared: dict[tuple[int, str], str] = {}

    def declare(self, round_no: int, stage_id: str, label: str) -> None:
        self.declared[(round_no, stage_id)] = label

    def resolve(self, value: str | list[str], round_no: int) -> list[InputRef]:
        """All artifacts an input value binds to, or Unresolved naming the reference that failed."""
        refs = [value] if isinstance(value, str) else list(value)
        out: list[InputRef] = []
        for ref in refs:
            out.extend(self._resolve_alternatives(ref, round_no))
        return out

    def _resolve_alternatives(self, ref: str, round_no: int) -> list[InputRef]:
        reasons = []
        for alternative in (part.strip() for part in ref.split("|")):
            try:
                return self._resolve_one(alternative, round_no)
            except Unresolved as err:
                reasons.append(f"{alternative}: {err}")
        raise Unresolved(f"cannot resolve {ref!r} ({'; '.join(reasons)})")

    def _resolve_one(self, ref: str, round_no: int) -> list[InputRef]:
        if ref.startswith("path:"):
            return [InputRef(ref=ref, path=self._external(ref[len("path:"):]))]
        if "/" not in ref:
            return [self._stage(ref, ref, round_no) if (round_no, ref) in self.declared else self._stage(ref, ref, 0)]
        prefix, _, stage_id = ref.partition("/")
        if prefix == "prev":
            if round_no < 2:
                raise Unresolved("no previous round" if round_no == 1 else "prev/ is only meaningful inside rounds")
            return [self._stage(ref, stage_id, round_no - 1)]
        if prefix == "last":
            rounds = self._rounds_of(stage_id)
            if not rounds:
                raise Unresolved(f"no round declares {stage_id!r} before this stage")
            return [self._stage(ref, stage_id, rounds[-1])]
        if prefix == "all":
            rounds = self._rounds_of(stage_id)
            if not rounds:
                raise Unresolved(f"no round declares {stage_id!r} before this stage")
            return [self._stage(ref, stage_id, r) for r in rounds]
        match = _ROUND_REF.match(ref)
        if match:
            return [self._stage(ref, match.group(2), int(match.group(1)))]
        raise Unresolved("unknown form; expected ID, prev/ID, rN/ID, last/ID, all/ID or path:P")

    def _rounds_of(self, stage_id: str) -> list[int]:
        return sorted(r for (r, sid) in self.declared if sid == stage_id and r > 0)

    def _stage(self, ref: str, stage_id: str, round_no: int) -> InputRef:
        label = self.declared.get((round_no, stage_id))
        if label is None:
            where = f"round {round_no}" if round_no else "the top level"
            raise Unresolved(f"no stage {stage_id!r} in {where} declared before this stage")
        return InputRef(ref=ref, stage=label)

    def _external(self, raw: str) -> Path:
        path = Path(raw).expanduser()
        candidates = [path] if path.is_absolute() else [Path.cwd() / path]
        if not path.is_absolute() and self.base_dir is not None:
            candidates.append(self.base_dir / path)
        for candidate in candidates:
            if candidate.exists():
                return candidate.resolve()
        raise Unresolved(f"no such file or directory (looked at {', '.join(str(c) for c in candidates)})")
