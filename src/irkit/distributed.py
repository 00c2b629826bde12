"""Multi-process runs on ``torch.distributed`` as launched by ``torchrun``.

``torchrun --nproc_per_node N -m irkit ...`` (and multi-node with ``--nnodes/--node_rank/
--master_addr``) starts N processes with ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and
``MASTER_ADDR``/``MASTER_PORT`` in their environment. :func:`init_process_group` joins them
(NCCL on CUDA, gloo on CPU); everything else here is a small helper over torch.distributed's
collectives, and all of them reduce to the one-process behaviour when no group exists.

Batch splitting rule used by the trainers: every rank sees the *global* batch (a function of
seed and epoch, :func:`irkit.train.loop.index_batches`) and works on the contiguous rows
:func:`local_rows` gives it; a loss over those rows is scaled by :func:`local_share` so that
DistributedDataParallel's gradient averaging yields the gradient of the global-batch mean,
i.e. the one-process gradient.
"""

from __future__ import annotations

import datetime
import os
import warnings
from typing import Any, Callable, TypeVar

import torch
import torch.distributed as dist

from irkit.errors import InputError

T = TypeVar("T")

#: Seconds a collective waits for the slowest rank (a resumed embedding run may leave rank 0
#: waiting while another rank re-embeds its shard); torchrun ends every rank when one fails.
TIMEOUT_ENV = "IRKIT_DIST_TIMEOUT"
DEFAULT_TIMEOUT_S = 24 * 3600


def launched_world_size() -> int:
    """``$WORLD_SIZE`` set by torchrun (1 when not launched by it)."""
    value = os.environ.get("WORLD_SIZE", "1")
    try:
        return max(1, int(value))
    except ValueError:
        raise InputError(f"WORLD_SIZE must be an integer, got '{value}'", field="WORLD_SIZE") from None


def launched_rank() -> int:
    """``$RANK`` set by torchrun (0 when not launched by it)."""
    return int(os.environ.get("RANK", "0"))


def init_process_group() -> bool:
    """Join the torchrun process group once (NCCL with one GPU per local rank, else gloo).

    Returns True when running with more than one process. Without torchrun (``WORLD_SIZE``
    unset or 1) nothing is initialised and False is returned.
    """
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size() > 1
    if launched_world_size() <= 1:
        return False
    timeout = datetime.timedelta(seconds=float(os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT_S)))
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl", timeout=timeout)
    else:
        dist.init_process_group("gloo", timeout=timeout)
    return True


def is_distributed() -> bool:
    """True inside an initialised process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's global rank (0 without a process group)."""
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    """Number of processes (1 without a process group)."""
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    """True on rank 0 (and in a one-process run): the rank that writes run folders and summaries."""
    return rank() == 0


def barrier() -> None:
    """Wait for every rank (no-op in a one-process run)."""
    if is_distributed():
        dist.barrier()


def _collective_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def shard_bounds(count: int, shard: int, shards: int) -> tuple[int, int]:
    """``[start, stop)`` of contiguous shard ``shard`` of ``shards`` over ``count`` items (sizes
    differ by at most one, larger shards first, as ``numpy.array_split``)."""
    base, extra = divmod(count, shards)
    start = shard * base + min(shard, extra)
    return start, start + base + (1 if shard < extra else 0)


def local_rows(count: int) -> slice:
    """This rank's contiguous rows of a global batch of ``count`` rows (all rows in one process).

    A batch with fewer rows than processes is refused (some rank would have nothing to train on).
    """
    if count < world_size():
        raise InputError(f"a global batch of {count} rows cannot be split over {world_size()} processes; "
                         "expected a batch size (and training set) of at least one row per process",
                         field="batch_size")
    start, stop = shard_bounds(count, rank(), world_size())
    return slice(start, stop)


def local_share(count: int) -> float:
    """Factor turning the mean of a loss over :func:`local_rows` into the term whose
    rank-averaged gradient is the gradient of the mean over all ``count`` rows
    (``local rows x world size / count``; exactly 1.0 in one process)."""
    rows = local_rows(count)
    return (rows.stop - rows.start) * world_size() / count


def gather_rows(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's ``[n_r, ...]`` rows in rank order -> ``[sum n_r, ...]``.

    Autograd flows back to each rank's own rows (``torch.distributed.nn.functional.all_gather``,
    as open_clip's ``gather_with_grad``), so a loss over the gathered rows — in-batch negatives —
    equals the one-process loss. Ranks may hold different row counts (padded for the exchange).
    Identity in a one-process run.
    """
    if not is_distributed():
        return tensor
    import torch.distributed.nn.functional as dist_fn

    count = torch.tensor([tensor.shape[0]], device=_collective_device())
    counts = [torch.zeros_like(count) for _ in range(world_size())]
    dist.all_gather(counts, count)
    sizes = [int(c.item()) for c in counts]
    longest = max(sizes)
    padded = tensor
    if tensor.shape[0] < longest:
        filler = tensor.new_zeros((longest - tensor.shape[0], *tensor.shape[1:]))
        padded = torch.cat([tensor, filler], dim=0)
    with warnings.catch_warnings():  # deprecated in favour of a private module; still the public API
        warnings.filterwarnings("ignore", category=FutureWarning, message=".*all_gather is deprecated.*")
        parts = dist_fn.all_gather(padded.to(_collective_device()).contiguous())
    return torch.cat([part[:size] for part, size in zip(parts, sizes)], dim=0).to(tensor.device)


def mean_over_ranks(value: torch.Tensor | float) -> float:
    """The mean of a scalar over all ranks (the value itself in one process)."""
    if not is_distributed():
        return float(value)
    tensor = torch.tensor([float(value)], dtype=torch.float64, device=_collective_device())
    dist.all_reduce(tensor)
    return float(tensor.item()) / world_size()


def broadcast_object(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (``obj`` is ignored on the others)."""
    if not is_distributed():
        return obj
    holder = [obj]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def run_on_main(fn: Callable[[], T]) -> T:
    """``fn()`` on rank 0, its result handed to every rank; an :class:`InputError` raised on
    rank 0 is raised on every rank (so all exit with the same one-line message)."""
    if not is_distributed():
        return fn()
    outcome: tuple[str, Any] = ("ok", None)
    if is_main():
        try:
            outcome = ("ok", fn())
        except InputError as e:
            outcome = ("error", str(e))
    outcome = broadcast_object(outcome)
    if outcome[0] == "error":
        raise InputError(outcome[1])
    return outcome[1]


def wrap_for_training(module: torch.nn.Module) -> torch.nn.Module:
    """``module`` in DistributedDataParallel (gradients averaged over ranks after each
    backward; rank 0's weights broadcast at construction); ``module`` itself in one process."""
    if not is_distributed():
        return module
    parameter = next((p for p in module.parameters() if p.requires_grad), None)
    on_gpu = parameter is not None and parameter.device.type == "cuda"
    return torch.nn.parallel.DistributedDataParallel(
        module, device_ids=[parameter.device] if on_gpu else None)
