"""The walk against the kept set with the kept rows spread over the nodes (``dedup.kept_shards``).

The walk (:mod:`.kept_walk`) visits chunks of rows in priority order, and each chunk's cost is
its rows x the rows kept so far. The order is sequential; the products are not: the kept rows are
split between actors, one a node (SPREAD), each on that node's cores. Per chunk, the walk task
sends the chunk to every shard; each returns, per chunk row, its best float32 cosine and the
position (in keeping order) of the kept row that gave it; the walk takes the best, settles the
chunk as the single walk does, and hands the chunk's newly kept rows to the shards holding fewest.

The decisions are the single walk's: a shard scores its rows in keeping order and keeps the
first of equal scores, and the walk prefers the earlier position between shards, which is the
single walk's tie rule; cosines within ``_EPS`` of the threshold are re-scored in float64 by the
walk task as before. Ray runs one caller's calls on an actor in order, so a shard has its rows
before it is next asked.
"""

from __future__ import annotations

import numpy as np
import ray

from platypus_ray.core.waits import wait_all
from platypus_ray.refine.dedup.similarity import best_over_tiles


class KeptShard:
    """A share of the kept vectors; answers "the best of mine for each of these rows"."""

    def __init__(self, dim: int, threads: int):
        self.vectors = np.empty((1024, dim), dtype=np.float32)
        self.positions = np.empty(1024, dtype=np.int64)
        self.n, self.threads, self.calls = 0, max(1, threads), 0

    def add(self, vectors: np.ndarray, positions: np.ndarray) -> int:
        if self.n + len(vectors) > len(self.vectors):
            grow = max(2 * len(self.vectors), self.n + len(vectors))
            self.vectors = np.resize(self.vectors, (grow, self.vectors.shape[1]))
            self.positions = np.resize(self.positions, grow)
        self.vectors[self.n : self.n + len(vectors)] = vectors
        self.positions[self.n : self.n + len(vectors)] = positions
        self.n += len(vectors)
        return self.n

    def best(self, chunk: np.ndarray, kept_tile: int) -> tuple[np.ndarray, np.ndarray]:
        """Each chunk row's best float32 cosine to this shard's rows (-2.0 without rows) and that row's position."""
        from threadpoolctl import threadpool_limits

        self.calls += 1
        with threadpool_limits(limits=self.threads):
            tiles = ((at, self.vectors[at : min(at + kept_tile, self.n)]) for at in range(0, self.n, kept_tile))
            best, arg = best_over_tiles(chunk, tiles)
        return best, np.where(best > -2.0, self.positions[np.minimum(arg, max(self.n - 1, 0))], 0)

    def report(self) -> tuple[str, int, int]:
        """(node id, rows held, chunks answered)."""
        return ray.get_runtime_context().get_node_id()[:12], self.n, self.calls


_KEPT_SHARD = ray.remote(KeptShard)


class ShardedKept:
    """The kept set of one walk spread over :class:`KeptShard` actors: the walk's products on other nodes."""

    def __init__(self, shards: list, timeout_s: float):
        self.shards, self.timeout_s = shards, timeout_s
        self.rows = np.zeros(len(shards), dtype=np.int64)
        self.adds: list = []

    def put(self, picked: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(picked, dtype=np.float32)

    def best_kept(self, chunk: np.ndarray, n_kept: int, kept_tile: int) -> tuple[np.ndarray, np.ndarray]:
        best = np.full(len(chunk), -2.0)
        position = np.zeros(len(chunk), dtype=np.int64)
        if n_kept == 0:
            return best, position
        ref = ray.put(chunk)
        asked = [s.best.remote(ref, kept_tile) for s, rows in zip(self.shards, self.rows) if rows]
        for shard_best, shard_position in wait_all(asked, self.timeout_s):
            better = (shard_best > best) | ((shard_best == best) & (shard_position < position))
            best[better], position[better] = shard_best[better], shard_position[better]
        return best, position

    def among(self, chunk: np.ndarray, rows: np.ndarray) -> np.ndarray:
        picked = chunk[rows]
        return (picked @ picked.T).astype(np.float64)

    def keep(self, chunk: np.ndarray, rows: np.ndarray, at: int) -> None:
        """The chunk's newly kept rows, in pieces to the shards holding fewest (each in keeping order)."""
        pieces = np.array_split(np.arange(len(rows)), len(self.shards))
        for piece, shard in zip(pieces, np.argsort(self.rows, kind="stable")):
            if len(piece):
                self.rows[shard] += len(piece)
                self.adds.append(self.shards[shard].add.remote(chunk[rows[piece]], at + piece))

    def finish(self) -> dict:
        """Every hand-over done (an actor's error surfaces here), and where the work ran."""
        wait_all(self.adds, self.timeout_s)
        reports = wait_all([s.report.remote() for s in self.shards], self.timeout_s)
        nodes: dict[str, int] = {}
        for node, _rows, calls in reports:
            nodes[node] = nodes.get(node, 0) + calls
        return {
            "shards": len(self.shards),
            "rows_per_shard": [rows for _, rows, _ in reports],
            "chunks_answered_per_node": dict(sorted(nodes.items())),
        }


def start_shards(count: int, dim: int, cpus: float, timeout_s: float) -> list:
    """``count`` shards spread over the nodes, each with ``cpus`` CPUs (its BLAS threads), once started."""
    shard = _KEPT_SHARD.options(num_cpus=cpus, scheduling_strategy="SPREAD")
    shards: list = [shard.remote(dim, max(1, int(cpus))) for _ in range(count)]
    wait_all([s.report.remote() for s in shards], timeout_s)  # placed and alive, or a bounded error
    return shards


def stop_shards(shards: list) -> None:
    for shard in shards:
        ray.kill(shard)
