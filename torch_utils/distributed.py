"""How this process takes part in a job of several processes, whoever started them.

One description, ``World``, for the three ways a heavy step runs:

- one process (world size 1: nothing to set up);
- ``--gpus N`` on one machine: the script starts the N processes itself (``spawn``), joined through a file;
- ``torchrun`` on one or several machines, or a scheduler that sets the same variables: every process runs the
  script, reads ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``LOCAL_WORLD_SIZE`` (and ``MASTER_ADDR``/``MASTER_PORT``
  for the ``env://`` rendezvous) and joins the others.

``launch(fn, ...)`` runs ``fn(world, *args)`` on every rank of whichever applies, with NCCL on CUDA and gloo on the
CPU, and turns a failed rank into ``RankFailed`` naming it. A collective waits at most ``timeout_s`` for a peer, so a
rank that hangs or vanishes ends the job in bounded time; a rank that crashes ends it at once (torchrun and spawn stop
the other local ranks, and gloo/NCCL peers on other machines see the closed connection at their next collective).
"""

import datetime
import logging
import os
import signal
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch

DEFAULT_TIMEOUT_S = 900  # a peer silent this long ends the job (torch's own default is 30 min for gloo)
TORCHRUN_VARIABLES = ('RANK', 'LOCAL_RANK', 'WORLD_SIZE', 'LOCAL_WORLD_SIZE')


class DistributedError(RuntimeError):
    """The launch environment is inconsistent (a one-line message for the user)."""


class RankFailed(RuntimeError):
    """A rank of the job failed; ``rank`` says which and the message its last error line."""

    def __init__(self, rank, message, exit_code=1):
        super().__init__(f'rank {rank} failed: {message}')
        self.rank = rank
        self.exit_code = exit_code


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1
    launcher: str = 'single'  # 'single', 'spawn' or 'torchrun'

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def device(self, device_type: str) -> torch.device:
        """This rank's device: ``cuda:<local rank>`` or the CPU."""
        return torch.device('cuda', self.local_rank) if device_type == 'cuda' else torch.device('cpu')

    def shard(self, items: Sequence) -> list:
        """This rank's share of ``items``: every ``size``-th item from position ``rank`` (independent of what any
        rank has already done, so the split never needs coordinating)."""
        return list(items)[self.rank::self.size]


def _int_variable(environ, name):
    value = environ.get(name)
    try:
        return int(value)
    except (TypeError, ValueError):
        raise DistributedError(f'environment variable {name}={value!r} is not an integer') from None


def from_environment(environ=None) -> Optional[World]:
    """The ``World`` that torchrun (or a scheduler using its variables) describes, or None when not launched so."""
    environ = os.environ if environ is None else environ
    if 'WORLD_SIZE' not in environ:
        return None
    missing = [name for name in ('RANK', 'WORLD_SIZE') if name not in environ]
    if missing:
        raise DistributedError(f'WORLD_SIZE is set but {", ".join(missing)} is not: launch with torchrun')
    size, rank = _int_variable(environ, 'WORLD_SIZE'), _int_variable(environ, 'RANK')
    local_rank = _int_variable(environ, 'LOCAL_RANK') if 'LOCAL_RANK' in environ else rank
    local_size = _int_variable(environ, 'LOCAL_WORLD_SIZE') if 'LOCAL_WORLD_SIZE' in environ else size
    if size < 1 or not 0 <= rank < size or not 0 <= local_rank < local_size:
        raise DistributedError(f'inconsistent torchrun variables: RANK={rank} LOCAL_RANK={local_rank} '
                               f'WORLD_SIZE={size} LOCAL_WORLD_SIZE={local_size}')
    if size > 1:
        for name in ('MASTER_ADDR', 'MASTER_PORT'):
            if not environ.get(name):
                raise DistributedError(f'WORLD_SIZE={size} but {name} is not set: launch with torchrun')
    return World(rank=rank, size=size, local_rank=local_rank, local_size=local_size, launcher='torchrun')


def init(world: World, device_type: str, timeout_s: float = DEFAULT_TIMEOUT_S, init_method: str = 'env://'):
    """Join the process group of ``world`` (nothing for one process). CPU ranks share the machine's cores."""
    if not world.distributed or torch.distributed.is_initialized():
        return
    if device_type == 'cuda':
        torch.cuda.set_device(world.local_rank)
        backend = 'nccl'
    else:
        if 'OMP_NUM_THREADS' not in os.environ:  # torchrun sets it when it starts several processes per machine
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // world.local_size))
        backend = 'gloo'
    torch.distributed.init_process_group(backend=backend, init_method=init_method, rank=world.rank,
                                         world_size=world.size, timeout=datetime.timedelta(seconds=timeout_s))


def shutdown():
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def barrier(world: World):
    if world.distributed:
        torch.distributed.barrier()


def broadcast_object(obj, world: World, src: int = 0):
    """``obj`` of rank ``src`` on every rank (any picklable value)."""
    if not world.distributed:
        return obj
    box = [obj]
    torch.distributed.broadcast_object_list(box, src=src)
    return box[0]


def gather_objects(obj, world: World) -> list:
    """Every rank's ``obj``, in rank order, on every rank."""
    if not world.distributed:
        return [obj]
    out = [None] * world.size
    torch.distributed.all_gather_object(out, obj)
    return out


def _last_line(text: str) -> str:
    lines = [line.strip() for line in str(text).strip().splitlines() if line.strip()]
    return lines[-1] if lines else 'no message'


def _record_failure(failure_dir, rank, message):
    """Note when a spawned rank failed: the first failure is the cause, later ones follow from it."""
    with open(os.path.join(failure_dir, f'failed-{rank}'), 'w') as f:
        f.write(f'{time.time():.6f} {message}')


def _run_rank(world, fn, args, device_type, timeout_s, init_method, failure_dir=None, user_errors=()):
    """``fn(world, *args)`` on this rank. On a spawned rank (``failure_dir`` set) one of ``user_errors`` (bad input)
    ends it with exit code 2 and its message, no traceback."""
    bad_input = tuple(user_errors) if failure_dir is not None else ()
    try:
        init(world, device_type, timeout_s, init_method)
        return fn(world, *args)
    except bad_input as exc:
        _record_failure(failure_dir, world.rank, _last_line(str(exc)))
        raise SystemExit(2) from None
    except BaseException as exc:
        failed = not isinstance(exc, SystemExit) or exc.code not in (0, None)
        if failed and world.distributed:
            message = f'{type(exc).__name__}: {exc}' if not isinstance(exc, SystemExit) else f'exit code {exc.code}'
            message = _last_line(message)
            if failure_dir is not None:
                _record_failure(failure_dir, world.rank, message)
            if not isinstance(exc, SystemExit):
                traceback.print_exc()
                print(f'error: rank {world.rank} of {world.size} failed: {message}', file=sys.stderr, flush=True)
        raise
    finally:
        shutdown()


def _spawn_entry(index, size, fn, args, device_type, timeout_s, init_file, user_errors):
    world = World(rank=index, size=size, local_rank=index, local_size=size, launcher='spawn')
    _run_rank(world, fn, args, device_type, timeout_s, f'file://{init_file}', os.path.dirname(init_file),
              user_errors)


def _first_failure(folder):
    """(rank, message) of the earliest failure the spawned ranks recorded, or None."""
    found = []
    for name in os.listdir(folder):
        if name.startswith('failed-'):
            with open(os.path.join(folder, name)) as f:
                stamp, _, message = f.read().partition(' ')
            found.append((float(stamp), int(name[len('failed-'):]), message))
    return min(found)[1:] if found else None


def _root_cause(exc, context, folder) -> RankFailed:
    """The rank whose failure ended a spawned job: one killed by a signal (other than the SIGTERM that stops the
    rest), else the earliest recorded failure, else the one torch noticed first."""
    for rank, process in enumerate(context.processes):
        code = process.exitcode
        if code is not None and code < 0 and -code != signal.SIGTERM:
            return RankFailed(rank, f'killed by signal {signal.Signals(-code).name}')
    first = _first_failure(folder)
    code = getattr(exc, 'exit_code', None)
    exit_code = code if code and code > 0 else 1
    if first is not None:
        return RankFailed(*first, exit_code=exit_code)
    message = _last_line(exc.msg) if isinstance(exc, torch.multiprocessing.ProcessRaisedException) \
        else f'exit code {code}'
    return RankFailed(exc.error_index, message, exit_code=exit_code)


def launch(fn: Callable, args: tuple = (), gpus: Optional[int] = None, device_type: str = 'cpu',
           timeout_s: float = DEFAULT_TIMEOUT_S, user_errors: tuple = ()):
    """Run ``fn(world, *args)`` on every rank: torchrun's when its variables are set (``gpus``, when given, must
    then equal its world size), else ``gpus`` processes spawned here, else this process alone. Returns ``fn``'s
    result on a single process; raises ``RankFailed`` when a spawned rank fails (exit code 2 when it was one of
    ``user_errors``, bad input, which then needs no traceback). Elsewhere exceptions reach the caller as raised."""
    world = from_environment()
    if world is not None:
        if gpus is not None and gpus != world.size:
            raise DistributedError(f"--gpus {gpus} disagrees with torchrun's world size {world.size}; "
                                   'leave --gpus out under torchrun')
        return _run_rank(world, fn, args, device_type, timeout_s, 'env://')
    gpus = gpus or 1
    if gpus == 1:
        return _run_rank(World(), fn, args, device_type, timeout_s, 'env://')
    if device_type == 'cuda' and gpus > torch.cuda.device_count():
        raise DistributedError(f'--gpus {gpus} but only {torch.cuda.device_count()} CUDA device(s) are visible')
    with tempfile.TemporaryDirectory() as temp_dir:
        init_file = os.path.abspath(os.path.join(temp_dir, '.torch_distributed_init'))
        context = torch.multiprocessing.start_processes(
            _spawn_entry, args=(gpus, fn, args, device_type, timeout_s, init_file, tuple(user_errors)), nprocs=gpus,
            join=False,
            start_method='spawn')
        quiet = logging.getLogger('torch.multiprocessing.spawn')  # its "Terminating process ..." would bury the cause
        level = quiet.level
        quiet.setLevel(logging.ERROR)
        try:
            while not context.join():
                pass
        except (torch.multiprocessing.ProcessRaisedException, torch.multiprocessing.ProcessExitedException) as exc:
            raise _root_cause(exc, context, temp_dir) from None
        finally:
            quiet.setLevel(level)
    return None
