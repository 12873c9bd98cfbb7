"""Container files without a Docker engine: the Dockerfile copies what exists and installs the whole project on the
image's own torch, the build context leaves the working tree's bulk out, docker/entry.sh drops TORCH_CUDA_ARCH_LIST and
passes its arguments on, and docker_run.sh calls a fake ``docker`` with the originals' run options."""

import json
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

try:
    import tomllib
except ImportError:  # Python < 3.11
    try:
        import tomli as tomllib
    except ImportError:
        tomllib = None

DOCKERFILE = REPO / 'Dockerfile'
DOCKERIGNORE = REPO / '.dockerignore'
RUN_SCRIPT = REPO / 'docker_run.sh'
ENTRY_SCRIPT = REPO / 'docker' / 'entry.sh'

needs_bash = pytest.mark.skipif(shutil.which('bash') is None, reason='bash not installed')


def pyproject():
    if tomllib is None:
        pytest.skip('reading pyproject.toml needs Python >= 3.11 or tomli')
    with open(REPO / 'pyproject.toml', 'rb') as f:
        return tomllib.load(f)


def package_folders():
    """Top-level folders of the packages that pyproject's setuptools include list names (``dnnlib*`` -> dnnlib)."""
    include = pyproject()['tool']['setuptools']['packages']['find']['include']
    return sorted({pattern.split('.')[0].rstrip('*') for pattern in include})


def instructions():
    """The Dockerfile as (INSTRUCTION, arguments) pairs: comments dropped, continuation lines joined."""
    out, pending = [], ''
    for line in DOCKERFILE.read_text().splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith('#')):
            continue
        if pending and stripped.startswith('#'):
            continue  # comment lines inside a continued instruction are removed by Docker
        if stripped.endswith('\\'):
            pending += stripped[:-1] + ' '
            continue
        text = pending + stripped
        pending = ''
        keyword, _, args = text.partition(' ')
        out.append((keyword.upper(), args.strip()))
    assert not pending, 'the Dockerfile ends inside a continued line'
    return out


def copy_instructions():
    """(sources, destination) of every COPY/ADD, flags such as --chown left out; --from copies are skipped."""
    out = []
    for keyword, args in instructions():
        if keyword not in ('COPY', 'ADD'):
            continue
        if args.startswith('['):
            words = json.loads(args)
        else:
            words = shlex.split(args)
        flags = [w for w in words if w.startswith('--')]
        if any(f.startswith('--from') for f in flags):
            continue
        words = [w for w in words if not w.startswith('--')]
        assert len(words) >= 2, f'{keyword} {args}: needs a source and a destination'
        out.append((words[:-1], words[-1]))
    return out


def run_commands():
    return [args for keyword, args in instructions() if keyword == 'RUN']


# ------------------------------------------------------------------------------------------------ scripts


@needs_bash
@pytest.mark.parametrize('script', [RUN_SCRIPT, ENTRY_SCRIPT], ids=['docker_run.sh', 'entry.sh'])
def test_scripts_parse_and_are_executable(script):
    assert script.is_file(), script
    assert script.stat().st_mode & stat.S_IXUSR, f'{script} is not executable'
    assert script.read_text().startswith('#!/usr/bin/env bash\n')
    result = subprocess.run(['bash', '-n', str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize('script', [RUN_SCRIPT, ENTRY_SCRIPT], ids=['docker_run.sh', 'entry.sh'])
def test_shellcheck(script):
    if shutil.which('shellcheck') is None:
        pytest.skip('shellcheck not installed')
    result = subprocess.run(['shellcheck', str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


# ------------------------------------------------------------------------------------------------ Dockerfile


def test_dockerfile_base_image_is_a_cuda_devel_image():
    froms = [args for keyword, args in instructions() if keyword == 'FROM']
    assert len(froms) == 1, froms
    image = froms[0].split()[0]
    name, _, tag = image.rpartition(':')
    assert name and tag, f'the base image {image} has no explicit tag'
    assert 'devel' in tag or name == 'nvcr.io/nvidia/pytorch', f'{image}: not a development image with nvcc'


def test_dockerfile_copies_existing_files_and_every_package():
    copies = copy_instructions()
    assert copies
    sources = [src for srcs, _ in copies for src in srcs]
    for src in sources:
        assert not os.path.isabs(src) and '..' not in Path(src).parts, f'COPY source outside the context: {src}'
        assert (REPO / src).exists(), f'COPY source {src} does not exist in the repository'
    copied = {Path(src).parts[0] for src in sources}
    for folder in package_folders():
        assert folder in copied, f'package folder {folder} (pyproject include list) is not copied'
    for name in ('pyproject.toml', 'README.md'):  # README.md: pyproject's readme, read when installing
        assert name in copied
    assert pyproject()['project']['readme'] == 'README.md'


def test_dockerfile_environment_and_entrypoint():
    instr = instructions()
    env = ' '.join(args for keyword, args in instr if keyword == 'ENV')
    assert re.search(r'\bPYTHONDONTWRITEBYTECODE[= ]1\b', env), env
    assert re.search(r'\bPYTHONUNBUFFERED[= ]1\b', env), env
    assert [args for keyword, args in instr if keyword == 'WORKDIR'] == ['/workspace']
    entry = [args for keyword, args in instr if keyword == 'ENTRYPOINT']
    assert len(entry) == 1 and json.loads(entry[0]) == ['/entry.sh']
    # /entry.sh is docker/entry.sh, copied before ENTRYPOINT.
    targets = {dest: srcs for srcs, dest in copy_instructions()}
    assert targets.get('/entry.sh') == ['docker/entry.sh']


def test_dockerfile_keeps_the_image_torch_and_installs_every_extra():
    pip = [cmd for cmd in run_commands() if 'pip install' in cmd]
    assert pip, 'nothing is installed'
    for cmd in pip:
        for match in re.finditer(r'pip install([^;&|]*)', cmd):
            words = shlex.split(match.group(1))
            assert not any(w.lower().startswith('torch') for w in words), f'torch reinstalled: {match.group(0)}'
            # Either no dependency resolution at all, or torch pinned to the version already in the image.
            assert '--no-deps' in words or any(w in ('-c', '--constraint') for w in words), match.group(0)
    text = ' '.join(pip)
    extras = sorted(pyproject()['project'].get('optional-dependencies', {}))
    # The extras are read from pyproject.toml at build time, or each is named explicitly.
    reads_all = 'optional-dependencies' in text
    assert reads_all or all(re.search(rf'\b{re.escape(e)}\b', text) for e in extras), \
        f'not every optional extra of pyproject.toml is installed: {extras}'
    assert re.search(r'install [^;&|]*(-e|--editable) ', text) or re.search(r'install [^;&|]* \.', text), \
        'the project itself is not installed'


@pytest.mark.skipif(sys.version_info < (3, 11), reason='the snippet uses tomllib (Python 3.11)')
def test_dockerfile_extras_snippet_reads_pyproject(tmp_path):
    """The build step that lists the extras, run on this pyproject.toml and on one with an added extra."""
    text = ' '.join(run_commands())
    match = re.search(r"extras=\"\$\(python -c '([^']*)'\)\"", text)
    if match is None:
        pytest.skip('the Dockerfile names the extras explicitly')
    snippet = match.group(1)
    listed = subprocess.run([sys.executable, '-c', snippet], cwd=REPO, capture_output=True, text=True, check=True)
    expected = sorted(pyproject()['project'].get('optional-dependencies', {}))
    assert listed.stdout.strip() == ','.join(expected)
    raw = (REPO / 'pyproject.toml').read_text()
    raw = raw.replace('[project.optional-dependencies]', '[project.optional-dependencies]\nzz_extra = ["six"]', 1)
    (tmp_path / 'pyproject.toml').write_text(raw)
    listed = subprocess.run([sys.executable, '-c', snippet], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert listed.stdout.strip().split(',')[-1] == 'zz_extra'


# ------------------------------------------------------------------------------------------------ .dockerignore


def dockerignore_patterns():
    out = []
    for line in DOCKERIGNORE.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith('#'):
            continue
        negate = line.startswith('!')
        pattern = line[1:].strip() if negate else line
        out.append((negate, pattern.strip('/')))
    return out


def _pattern_regex(pattern):
    regex, i = '', 0
    while i < len(pattern):
        if pattern.startswith('**/', i):
            regex, i = regex + '(?:.*/)?', i + 3
        elif pattern.startswith('**', i):
            regex, i = regex + '.*', i + 2
        elif pattern[i] == '*':
            regex, i = regex + '[^/]*', i + 1
        elif pattern[i] == '?':
            regex, i = regex + '[^/]', i + 1
        elif pattern[i] == '[':
            end = pattern.index(']', i)
            regex, i = regex + pattern[i:end + 1], end + 1
        else:
            regex, i = regex + re.escape(pattern[i]), i + 1
    return re.compile(regex)


def ignored(path):
    """Docker's rule: the last pattern matching the path or one of its parent folders decides."""
    parts = Path(path).parts
    prefixes = ['/'.join(parts[:n]) for n in range(1, len(parts) + 1)]
    result = False
    for negate, pattern in dockerignore_patterns():
        regex = _pattern_regex(pattern)
        if any(regex.fullmatch(p) for p in prefixes):
            result = not negate
    return result


def test_dockerignore_keeps_what_is_copied_and_drops_the_bulk():
    for srcs, _ in copy_instructions():
        for src in srcs:
            path = REPO / src
            files = [path] if path.is_file() else [p for p in path.rglob('*') if p.is_file()
                                                     and '__pycache__' not in p.parts]
            assert files, src
            for f in files:
                rel = f.relative_to(REPO).as_posix()
                assert not ignored(rel), f'{rel} is copied by the Dockerfile but excluded by .dockerignore'
    for rel in ('.git/config', '.venv/bin/python', 'out/x.png', 'runs/00000-x/network-snapshot-000000.pkl',
                '.cache/bigan/torch_extensions/x.so', 'DATASETS/faces/images/0.png', 'dnnlib/__pycache__/util.pyc',
                'EXPERIMENTS/checkpoints/CrossEyed_NIR_RGB.pkl', 'training/x.egg-info/PKG-INFO'):
        assert ignored(rel), f'{rel} would be sent to the Docker daemon'


# ------------------------------------------------------------------------------------------------ entry.sh


@needs_bash
def test_entry_script_unsets_arch_list_and_passes_arguments():
    env = dict(os.environ, TORCH_CUDA_ARCH_LIST='8.0', BIGAN_MARKER='kept')
    result = subprocess.run([str(ENTRY_SCRIPT), 'env'], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    names = {line.split('=', 1)[0] for line in result.stdout.splitlines()}
    assert 'TORCH_CUDA_ARCH_LIST' not in names
    assert 'BIGAN_MARKER' in names  # the rest of the environment reaches the command
    result = subprocess.run([str(ENTRY_SCRIPT), 'printf', '%s|', 'a', 'b c', '', '$HOME', '*'],
                            capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0 and result.stdout == 'a|b c||$HOME|*|'
    # The command's exit code comes back.
    assert subprocess.run([str(ENTRY_SCRIPT), 'bash', '-c', 'exit 7']).returncode == 7


# ------------------------------------------------------------------------------------------------ docker_run.sh


FAKE_DOCKER = """#!{python}
import json, os, sys
with open(os.environ['FAKE_DOCKER_LOG'], 'a') as f:
    f.write(json.dumps(sys.argv[1:]) + '\\n')
if sys.argv[1:2] == ['inspect']:
    sys.exit(int(os.environ.get('FAKE_INSPECT_RC', '0')))
sys.exit(int(os.environ.get('FAKE_RUN_RC', '0')))
"""


@pytest.fixture
def fake_docker(tmp_path):
    """Run docker_run.sh in a folder with a space in its name, with a fake docker first on PATH that logs its calls."""
    bin_dir = tmp_path / 'bin'
    bin_dir.mkdir()
    docker = bin_dir / 'docker'
    docker.write_text(FAKE_DOCKER.format(python=sys.executable))
    docker.chmod(0o755)
    log = tmp_path / 'docker.log'
    work = tmp_path / 'my project'
    work.mkdir()

    def run(args, stdin=subprocess.DEVNULL, **env_changes):
        log.write_text('')
        env = dict(os.environ, PATH=f'{bin_dir}{os.pathsep}{os.environ.get("PATH", "")}', FAKE_DOCKER_LOG=str(log))
        for key in ('IMAGE', 'GPUS', 'FAKE_INSPECT_RC', 'FAKE_RUN_RC'):
            env.pop(key, None)
        env.update(env_changes)
        result = subprocess.run([str(RUN_SCRIPT), *args], cwd=work, env=env, stdin=stdin, capture_output=True,
                                text=True, timeout=60)
        calls = [json.loads(line) for line in log.read_text().splitlines()]
        return result, calls

    run.work = work
    return run


def split_run_call(call, image):
    assert call[0] == 'run', call
    assert image in call, call
    at = call.index(image)
    return call[1:at], call[at + 1:]


def has_option(options, *words):
    n = len(words)
    return any(tuple(options[i:i + n]) == words for i in range(len(options) - n + 1))


USER_ARGS = ['python', 'train_db_stylegan2.py', '--outdir', 'my runs', '--data=DATASETS/a b', '', '$HOME', '*']


@needs_bash
def test_run_passes_the_originals_options_and_the_arguments_verbatim(fake_docker):
    result, calls = fake_docker(USER_ARGS, IMAGE='bigan:test', FAKE_RUN_RC='5')
    assert result.returncode == 5, result.stderr  # docker's exit code comes back
    assert calls[0] == ['inspect', '--type=image', 'bigan:test']
    assert len(calls) == 2
    options, rest = split_run_call(calls[1], 'bigan:test')
    assert rest == USER_ARGS
    uid_gid = f'{os.getuid()}:{os.getgid()}'
    assert has_option(options, '--gpus', 'all') or '--gpus=all' in options
    assert has_option(options, '-v', f'{fake_docker.work}:/scratch')
    assert has_option(options, '--user', uid_gid)
    assert '--workdir=/scratch' in options or has_option(options, '--workdir', '/scratch')
    assert has_option(options, '-e', 'HOME=/scratch')
    assert '--rm' in options and '--shm-size=2g' in options
    assert '-it' not in options  # stdin is not a terminal


@needs_bash
def test_run_defaults_to_bigan_latest_and_is_interactive_on_a_terminal(fake_docker):
    primary, secondary = os.openpty()
    try:
        result, calls = fake_docker(['bash'], stdin=secondary)
    finally:
        os.close(primary)
        os.close(secondary)
    assert result.returncode == 0, result.stderr
    options, rest = split_run_call(calls[-1], 'bigan:latest')
    assert rest == ['bash'] and '-it' in options


@needs_bash
def test_gpus_override(fake_docker):
    result, calls = fake_docker(['true'], GPUS='none')
    assert result.returncode == 0, result.stderr
    options, _ = split_run_call(calls[-1], 'bigan:latest')
    assert not any(o.startswith('--gpus') for o in options)
    result, calls = fake_docker(['true'], GPUS='device=1')
    options, _ = split_run_call(calls[-1], 'bigan:latest')
    assert has_option(options, '--gpus', 'device=1')


@needs_bash
def test_unknown_image(fake_docker):
    result, calls = fake_docker(['python', 'x.py'], IMAGE='nosuch:tag', FAKE_INSPECT_RC='1')
    assert result.returncode == 1
    assert 'Unknown container image: nosuch:tag' in result.stderr
    assert 'docker build --tag nosuch:tag .' in result.stderr
    assert calls == [['inspect', '--type=image', 'nosuch:tag']]  # nothing is run


@needs_bash
@pytest.mark.parametrize('flag', ['--help', '-h'])
def test_help_does_not_call_docker(fake_docker, flag):
    result, calls = fake_docker([flag], FAKE_INSPECT_RC='1')
    assert result.returncode == 0, result.stderr
    assert 'Usage' in result.stdout and 'IMAGE' in result.stdout and 'GPUS' in result.stdout
    assert calls == []
    # Only as the first argument: later it belongs to the command.
    result, calls = fake_docker(['python', 'x.py', flag])
    assert result.returncode == 0 and split_run_call(calls[-1], 'bigan:latest')[1] == ['python', 'x.py', flag]
