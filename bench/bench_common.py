"""What the benchmark scripts share: the default device, running one measurement in a fresh worker process
(so that each peak-memory reading starts clean), whose last stdout line is its JSON result, timing a call with the
device synchronised, and the process's peak memory."""

import json
import resource
import subprocess
import sys
import time


def default_device(device):
    """``device`` if given, else 'cuda' when available, else 'cpu'."""
    if device is not None:
        return device
    import torch
    return 'cuda' if torch.cuda.is_available() else 'cpu'


def run_worker(cmd, label):
    """Run a worker command; its last stdout line parsed as JSON. Exits with the worker's output tail on failure."""
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f'benchmark worker {label} failed:\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}')
    return json.loads(out.stdout.strip().splitlines()[-1])


def sync(device):
    """Wait for the device's queued work (a no-op on the CPU)."""
    import torch
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def timed(device, fn):
    """``(seconds, fn())``, with the device synchronised on both sides."""
    sync(device)
    start = time.perf_counter()
    result = fn()
    sync(device)
    return time.perf_counter() - start, result


def peak_memory(device):
    """Peak bytes: allocated on a CUDA device, else this process's resident set."""
    import torch
    if device.type == 'cuda':
        return torch.cuda.max_memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
