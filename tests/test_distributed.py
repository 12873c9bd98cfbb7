"""Several processes on the CPU with gloo: the launch environment, training under torchrun (one machine and two
"machines" on localhost) against ``--gpus 2``, exact continuation of a two-process run, and failing ranks."""

import json
import os
import socket
import subprocess
import sys
import time

import pytest
import torch

from conftest import REPO, assert_proc_error
from torch_utils import distributed
from training import legacy
from training import training_loop as tl

RES = 16
TORCHRUN = [sys.executable, '-m', 'torch.distributed.run']
# Two ranks on two cores: one thread each (torchrun sets this itself only with several processes per machine).
ENV = dict(os.environ, OMP_NUM_THREADS='1', PYTHONUNBUFFERED='1')


# ------------------------------------------------------------------------------------------ the environment


def test_no_torchrun_variables_is_a_single_process():
    assert distributed.from_environment({}) is None


def test_torchrun_variables_describe_the_world():
    env = dict(RANK='3', LOCAL_RANK='1', WORLD_SIZE='4', LOCAL_WORLD_SIZE='2', MASTER_ADDR='10.0.0.1',
               MASTER_PORT='29500')
    world = distributed.from_environment(env)
    assert (world.rank, world.size, world.local_rank, world.local_size) == (3, 4, 1, 2)
    assert world.launcher == 'torchrun' and world.distributed and not world.is_main
    assert world.device('cuda') == torch.device('cuda', 1) and world.device('cpu') == torch.device('cpu')


@pytest.mark.parametrize('env, fragment', [
    (dict(WORLD_SIZE='2'), 'RANK'),
    (dict(WORLD_SIZE='2', RANK='x', MASTER_ADDR='a', MASTER_PORT='1'), "RANK='x'"),
    (dict(WORLD_SIZE='2', RANK='2', MASTER_ADDR='a', MASTER_PORT='1'), 'inconsistent'),
    (dict(WORLD_SIZE='2', RANK='1', MASTER_PORT='1'), 'MASTER_ADDR'),
])
def test_bad_torchrun_variables_are_one_line_errors(env, fragment):
    with pytest.raises(distributed.DistributedError, match=fragment) as info:
        distributed.from_environment(env)
    assert '\n' not in str(info.value)


def test_shards_cover_every_item_once_whatever_was_done():
    items = list(range(17))
    shards = [distributed.World(rank=r, size=3).shard(items) for r in range(3)]
    assert sorted(i for s in shards for i in s) == items
    assert shards[1] == [1, 4, 7, 10, 13, 16]


def _raise_on_rank_1(world, message):
    if world.rank == 1:
        raise ValueError(message)
    distributed.barrier(world)  # rank 0 would wait here for the timeout if the failure were not noticed


def _kill_rank_1(world):
    if world.rank == 1:
        os.kill(os.getpid(), 9)
    distributed.barrier(world)


def _gather_ranks(world, out_dir):
    got = distributed.gather_objects({'rank': world.rank}, world)
    chosen = distributed.broadcast_object(f'from rank {world.rank}', world)
    with open(os.path.join(out_dir, f'rank{world.rank}.txt'), 'w') as f:
        f.write(f'{[g["rank"] for g in got]} {chosen} {torch.get_num_threads()}')


def test_spawned_ranks_gather_and_broadcast(tmp_path, monkeypatch):
    monkeypatch.delenv('OMP_NUM_THREADS', raising=False)
    distributed.launch(_gather_ranks, args=(str(tmp_path),), gpus=2, device_type='cpu', timeout_s=60)
    cores_each = max(1, (os.cpu_count() or 1) // 2)
    for rank in range(2):
        assert (tmp_path / f'rank{rank}.txt').read_text() == f'[0, 1] from rank 0 {cores_each}'


@pytest.mark.parametrize('fn, args, fragment', [
    (_raise_on_rank_1, ('the disk is full',), 'ValueError: the disk is full'),
    (_kill_rank_1, (), 'signal SIGKILL'),
])
def test_a_failing_spawned_rank_ends_the_job_and_is_named(fn, args, fragment):
    start = time.time()
    with pytest.raises(distributed.RankFailed) as info:
        distributed.launch(fn, args=args, gpus=2, device_type='cpu', timeout_s=300)
    assert info.value.rank == 1 and str(info.value).startswith('rank 1 failed: ') and fragment in str(info.value)
    assert time.time() - start < 120  # far below the 300 s timeout: nobody waited for it


# ------------------------------------------------------------------------------------------ training


@pytest.fixture(scope='module')
def eyes(tmp_path_factory):
    dest = tmp_path_factory.mktemp('data') / 'eyes'
    result = subprocess.run([sys.executable, 'dataset_tool.py', 'demo', '--dest', str(dest), '--count', '24',
                             '--resolution', str(RES), '--seed', '1'], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return dest


def _train_args(outdir, *extra):
    return ['train_db_stylegan2.py', f'--outdir={outdir}', '--workers=0', '--device=cpu', '--metrics=none',
            '--tick=0.5', '--snap=1', *extra]


def _fresh_args(eyes, outdir, kimg=1):
    return _train_args(outdir, f'--data={eyes}', '--cfg=tiny', f'--kimg={kimg}', '--batch=16', '--seed=3',
                       '--aug=noaug', '--mirror=1')


def _run(cmd, timeout=600, **kwargs):
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout, env=ENV, **kwargs)


def _free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _only_run_dir(outdir):
    runs = [p for p in outdir.iterdir() if p.is_dir()]
    assert len(runs) == 1, runs
    return runs[0]


def _weights(run_dir):
    with open(tl.latest_snapshot(str(run_dir)), 'rb') as f:
        data = legacy.load_network_pkl(f)
    return {f'{key}.{name}': t for key in ('G', 'G_ema', 'D', 'D_NIR') for name, t in data[key].state_dict().items()}


def _assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), f'{name} differs'


@pytest.fixture(scope='module')
def spawned_run(eyes, tmp_path_factory):
    """``--gpus 2``: two gloo processes spawned by the script, 2 kimg, a snapshot after each."""
    outdir = tmp_path_factory.mktemp('spawned')
    result = _run([sys.executable, *_fresh_args(eyes, outdir, kimg=2), '--gpus=2'])
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return _only_run_dir(outdir)


def test_torchrun_trains_the_same_weights_as_gpus_2(eyes, spawned_run, tmp_path):
    result = _run([*TORCHRUN, '--standalone', '--nproc-per-node=2', *_fresh_args(eyes, tmp_path, kimg=2)])
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    run_dir = _only_run_dir(tmp_path)
    assert run_dir.name == spawned_run.name  # the same options make the same run name
    _assert_same_weights(_weights(run_dir), _weights(spawned_run))
    log = (run_dir / 'log.txt').read_text()
    assert log.count('Exiting...') == 1 and 'Traceback' not in log


def test_two_machines_on_localhost_write_one_run_directory(eyes, tmp_path):
    port = _free_port()
    procs = [subprocess.Popen([*TORCHRUN, '--nnodes=2', f'--node-rank={node}', '--nproc-per-node=1',
                               '--master-addr=127.0.0.1', f'--master-port={port}', *_fresh_args(eyes, tmp_path)],
                              cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for node in (0, 1)]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    for node, (p, out) in enumerate(zip(procs, outputs)):
        assert p.returncode == 0, f'node {node}: {out[-3000:]}'
    run_dir = _only_run_dir(tmp_path)
    assert (run_dir / 'network-snapshot-000001.pkl').is_file() and (run_dir / 'training-state-000001.pt').is_file()
    assert json.loads((run_dir / 'training_options.json').read_text())['num_gpus'] == 2
    state = tl.load_training_state(str(run_dir / 'training-state-000001.pt'))
    assert state['num_gpus'] == 2 and len(state['rng']) == 2


def test_a_two_process_run_continues_exactly(eyes, spawned_run, tmp_path):
    first = _run([sys.executable, *_fresh_args(eyes, tmp_path / 'a', kimg=1), '--gpus=2'])
    assert first.returncode == 0, first.stderr[-3000:]
    part = _only_run_dir(tmp_path / 'a')
    # Continued under torchrun: the saved world size (2) is the one it launches.
    cont = _run([*TORCHRUN, '--standalone', '--nproc-per-node=2', *_train_args(tmp_path / 'b', f'--resume={part}',
                                                                              '--kimg=2')])
    assert cont.returncode == 0, cont.stdout[-3000:] + cont.stderr[-3000:]
    assert 'Continuing the saved run at kimg 1.0' in cont.stdout
    _assert_same_weights(_weights(_only_run_dir(tmp_path / 'b')), _weights(spawned_run))


def test_continuing_on_another_world_size_is_a_clear_error(spawned_run, tmp_path):
    result = _run([sys.executable, *_train_args(tmp_path, f'--resume={spawned_run}', '--kimg=3', '--gpus=1')])
    assert_proc_error(result, 'training-state-000002.pt', 'saved by a run of 2 process(es)', 'not 1')
    assert not any(tmp_path.iterdir())


def test_gpus_must_match_torchrun(eyes, tmp_path):
    result = _run([*TORCHRUN, '--standalone', '--nproc-per-node=1', *_fresh_args(eyes, tmp_path), '--gpus=2'])
    assert result.returncode != 0
    assert "--gpus 2 disagrees with torchrun's world size 1" in result.stderr
    assert not any(tmp_path.iterdir())


def test_a_rank_that_raises_ends_the_torchrun_job_naming_it(eyes, tmp_path):
    env = dict(ENV, FAULT_RANK='1', FAULT_MODE='raise', FAULT_AFTER='3')
    start = time.time()
    result = subprocess.run([*TORCHRUN, '--standalone', '--nproc-per-node=2', 'tests/fault_injection.py',
                             *_fresh_args(eyes, tmp_path, kimg=5), '--dist-timeout=300'], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode != 0
    assert 'error: rank 1 of 2 failed: RuntimeError: injected failure on rank 1' in result.stderr
    assert time.time() - start < 200  # not the 300 s timeout
