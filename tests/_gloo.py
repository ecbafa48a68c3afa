"""Two-process gloo runs of the real Trainer on CPU (torch.multiprocessing workers): the port and the rank's
torchrun-style environment."""
import os
import socket


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def set_rank_env(rank: int, port: int, world: int = 2) -> None:
    """What torchrun would set for `rank`; one OpenMP thread per rank on the 2-core machines."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank),
                      LOCAL_RANK=str(rank), OMP_NUM_THREADS="1")


def run_two_ranks(worker, *args) -> list:
    """Spawns `worker(rank, port, *args, queue)` for ranks 0 and 1; returns what each put on the queue, in
    rank order (each puts one tuple whose first item is its rank), after both exited cleanly."""
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=worker, args=(r, port, *args, q)) for r in range(2)]
    for p in procs:
        p.start()
    results = sorted(q.get(timeout=600) for _ in procs)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    return results
