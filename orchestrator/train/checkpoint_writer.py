"""Writing a checkpoint without making the steps wait for its hashes.

Every rank writes its DeepSpeed shard and its rank state (train/rank_state.py); then each hashes
a size-balanced share of the checkpoint's files in a background thread while training goes on
(hashlib lets go of the GIL, and on a GPU node the host's cores idle during the steps). The
checkpoint is sealed (manifest with the hashes, COMPLETE, `latest`; checkpoint.py) at the first
step whose all-reduce shows every rank's share hashed, or at once for the last checkpoint of a
command (the final step, a stop). Until it is sealed it does not count: a crash in between
resumes from the previous sealed one, exactly as after a crash during the save. Before a byte is
written, every rank agrees there is room for the whole checkpoint (train/room.py).
"""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

from orchestrator.rundir import checkpoints as checkpoint
from orchestrator.train import engine as ds
from orchestrator.train import rank_state, room


class CheckpointWriter:
    def __init__(self, engine, root: Path, rank: int, world: int, keep: int, progress) -> None:
        self.engine, self.root, self.rank, self.world, self.keep = engine, root, rank, world, keep
        self.progress = progress
        self._pending: tuple[Path, dict, threading.Thread, dict] | None = None
        self.sealed: list[tuple[float, int]] = []
        """Rank 0: (seconds the save blocked the steps, bytes) of every checkpoint this process sealed."""

    def save(self, step: int, data_position: dict, meta: dict, seal_now: bool) -> None:
        """Write this rank's part of the checkpoint of `step` (a collective: every rank calls it);
        `meta` goes to the manifest. `seal_now`: wait for the hashes and seal before returning."""
        import torch.distributed as dist

        self.seal()  # an earlier checkpoint still hashing is sealed first: checkpoints seal in order
        self.progress.mark(step, "checkpoint")
        path = self.root / checkpoint.tag_for(step)
        room.ensure(self.root, room.checkpoint_bytes(self.engine, self.rank), f"the checkpoint of step {step}")
        if self.rank == 0 and path.exists():
            shutil.rmtree(path)  # a broken earlier attempt at this step
        dist.barrier()
        began = time.perf_counter()
        ds.save_checkpoint(self.engine, self.root, path.name)
        rank_state.save(checkpoint.rank_state_file(path, self.rank), data_position)
        self.progress.mark(step, "checkpoint")
        dist.barrier()  # every rank's files are on disk: each hashes its share
        saved = time.perf_counter()
        result: dict = {}
        names = checkpoint.share(checkpoint.files_of(path), self.rank, self.world)

        def hash_share() -> None:
            try:
                result["digests"] = checkpoint.sha256(path, names)
            except OSError as error:  # every rank learns of it at the seal, and all raise together
                result["error"] = f"hashing {path} failed on rank {self.rank}: {error}"
            result["hash_s"] = time.perf_counter() - saved

        thread = threading.Thread(target=hash_share, name=f"hash-{path.name}", daemon=True)
        thread.start()
        self._pending = (path, {**meta, "save_s": saved - began}, thread, result)
        if seal_now:
            self.seal()

    def hashed(self) -> bool:
        """This rank has nothing left to hash (the flag the loop's all-reduce carries)."""
        return self._pending is None or not self._pending[2].is_alive()

    def seal(self) -> None:
        """Seal the pending checkpoint, waiting for this rank's hashes if need be (a collective)."""
        if self._pending is None:
            return
        import torch.distributed as dist

        path, meta, thread, result = self._pending
        self._pending = None
        waited = time.perf_counter()
        thread.join()
        blocked = time.perf_counter() - waited
        shares = [None] * self.world
        dist.all_gather_object(shares, (result.get("digests", {}), result["hash_s"], blocked, result.get("error")))
        errors = [share[3] for share in shares if share[3]]
        if errors:
            raise RuntimeError(errors[0])
        if self.rank == 0:
            digests = {name: digest for share, _, _, _ in shares for name, digest in share.items()}
            checkpoint.seal(path, {**meta, "hash_s": max(s[1] for s in shares),
                                   "hash_wait_s": max(s[2] for s in shares)}, digests)
            self.sealed.append((meta["save_s"], sum(checkpoint.files_of(path).values())))
            checkpoint.retain(self.root, self.keep)
        dist.barrier()
