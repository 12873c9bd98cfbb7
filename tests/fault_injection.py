"""Run one of the project's scripts with one rank made to fail (for the failure tests of several processes).

    python tests/fault_injection.py RANK MODE AFTER SCRIPT [ARGS...]

Rank RANK, after AFTER training steps (train_db_stylegan2.py) or AFTER generated samples (train_interpreter.py),
raises a RuntimeError (MODE=raise) or kills itself with SIGKILL (MODE=kill). Launch it with torchrun, whose every
rank runs this file (processes spawned by ``--gpus N`` would import the script instead, unpatched).
"""

import os
import runpy
import signal
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

FAIL_RANK, MODE, AFTER = int(os.environ['FAULT_RANK']), os.environ['FAULT_MODE'], int(os.environ['FAULT_AFTER'])
_calls = {'n': 0}


def _rank():
    import torch
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank()
    return int(os.environ.get('RANK', 0))


def _maybe_fail():
    if _rank() != FAIL_RANK:
        return
    _calls['n'] += 1
    if _calls['n'] > AFTER:
        if MODE == 'kill':
            os.kill(os.getpid(), signal.SIGKILL)
        raise RuntimeError(f'injected failure on rank {FAIL_RANK}')


def _patch():
    from interpreter import generate
    from training import loss

    accumulate = loss.StyleGAN2Loss.accumulate_gradients

    def failing_accumulate(self, phase, *args, **kwargs):
        if phase in ('Gmain', 'Gboth'):
            _maybe_fail()
        return accumulate(self, phase, *args, **kwargs)

    loss.StyleGAN2Loss.accumulate_gradients = failing_accumulate
    write_png = generate._write_png

    def failing_write(path, array, mode):
        if os.sep + 'RGB' + os.sep in path:  # once per sample, before its other files
            _maybe_fail()
        return write_png(path, array, mode)

    generate._write_png = failing_write


_patch()

if __name__ == '__main__':
    script = os.path.join(REPO, sys.argv[1])
    sys.argv = [script] + sys.argv[2:]
    runpy.run_path(script, run_name='__main__')
