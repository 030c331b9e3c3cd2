"""A recipe under torchrun: one process (rank 0) runs the recipe, the others join its training stages.

`torchrun --nproc-per-node N -m posttrain.cli run RECIPE` starts N runners. Rank 0 is the runner that
holds the run directory (lock, manifests, `_DONE`, metrics, report). A stage kind marked `distributed`
(training: sft, dpo, reward_model, pretraining) runs on every rank, and the ranks meet inside it (the
training engine's process group); any other stage (data, generation, judging, evaluation, merging) runs
on rank 0 alone while the other ranks wait for its `_DONE`. The ranks agree on what to skip because they
read the same run directory and compute the same cache keys; rank 0 stamps each stage it starts with
the launch's id (the manifest's `launch`), so a waiting rank never mistakes an earlier launch's files
for this one's. Waiting is by polling the run directory (which every node must share), so no
collective is pending while rank 0 works alone and no process-group timeout can expire.

The launch id is torchrun's rendezvous id (`TORCHELASTIC_RUN_ID`, a fresh uuid with `--standalone`;
give multi-node runs `--rdzv-id`), with the restart count, master address and port; or
`POSTTRAIN_LAUNCH_ID`, the same on every process, under another launcher. Knows no torch.
"""
from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path

from posttrain.recipe.rundir import RunDirError, is_done, read_json, MANIFEST

LAUNCH_ENV = "POSTTRAIN_LAUNCH_ID"
POLL_SECONDS = 0.5


@dataclasses.dataclass(frozen=True)
class Processes:
    """Where this runner sits among the processes of one launch."""

    rank: int = 0
    world_size: int = 1
    launch: str = ""

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls) -> "Processes":
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        if world_size <= 1:
            return cls()
        launch = os.environ.get(LAUNCH_ENV) or "/".join(
            os.environ.get(name, "") for name in ("TORCHELASTIC_RUN_ID", "TORCHELASTIC_RESTART_COUNT", "MASTER_ADDR",
                                                   "MASTER_PORT"))
        if not launch.strip("/"):
            raise RunDirError(f"WORLD_SIZE={world_size} but no launch id: start the runners with torchrun, or set "
                              f"{LAUNCH_ENV} to one value on every process")
        return cls(int(os.environ.get("RANK", "0")), world_size, launch)


class RankZeroFailedError(RuntimeError):
    """The stage failed on rank 0; the waiting rank stops too."""


def wait_for_stage(stage_dir: Path, key: str, launch: str, started_is_enough: bool,
                   poll: float = POLL_SECONDS) -> None:
    """Block until rank 0 has started (`started_is_enough`) or finished the stage with `key` in this launch.

    Raises RankZeroFailedError when rank 0's manifest says the stage failed in this launch.
    """
    while True:
        manifest = read_json(stage_dir / MANIFEST)
        if isinstance(manifest, dict) and manifest.get("key") == key and manifest.get("launch") == launch:
            status = manifest.get("status")
            if status == "failed":
                raise RankZeroFailedError(f"{stage_dir.name} failed on rank 0: {manifest.get('error', '?')}")
            if (status == "running" and started_is_enough) or (status == "done" and is_done(stage_dir, key)):
                return
        time.sleep(poll)
