"""What the benchmark scripts share: the default device and running one measurement in a fresh worker process
(so that each peak-memory reading starts clean), whose last stdout line is its JSON result."""

import json
import subprocess
import sys


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
