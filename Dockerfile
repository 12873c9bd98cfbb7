# Container image for bigan (dual-branch StyleGAN2-ADA, Semantic Mask Generator, ArcFace privacy filter).
#
#   docker build --tag bigan:latest .
#   ./docker_run.sh python train_db_stylegan2.py --help
#
# Base: PyTorch's official CUDA *development* image. It bundles torch 2.10.0 built for CUDA 12.8 with cuDNN 9
# (conda Python in /opt/conda) and, being a devel image, nvcc and the CUDA headers, which the custom ops in
# torch_utils/ops need to compile at first use. CUDA 12.8 covers GPUs from Maxwell (sm_50) to Blackwell (sm_120);
# the host needs the NVIDIA Container Toolkit and a driver recent enough for CUDA 12.8 (R570 or newer).
# The image's torch is kept as it is: the project's other dependencies are installed around it.
FROM pytorch/pytorch:2.10.0-cuda12.8-cudnn9-devel

ENV PYTHONDONTWRITEBYTECODE=1
ENV PYTHONUNBUFFERED=1

# torch's extension builder needs a host C++ compiler next to nvcc; install one only if the base image lacks it.
RUN if ! command -v g++ >/dev/null 2>&1; then \
        apt-get update && apt-get install -y --no-install-recommends g++ && rm -rf /var/lib/apt/lists/*; \
    fi

WORKDIR /workspace

# Only what installing needs. At run time docker_run.sh mounts the repository at /scratch and works there, so the
# mounted sources (first on sys.path, being the working directory) are the ones that run; this copy only provides
# the installed distribution and its dependencies.
COPY pyproject.toml README.md ./
COPY dnnlib ./dnnlib
COPY torch_utils ./torch_utils
COPY training ./training
COPY interpreter ./interpreter
COPY metrics ./metrics
COPY apf ./apf
COPY pipeline ./pipeline
COPY segmentation ./segmentation

# Install the project with every optional extra of pyproject.toml (read from the file, so extras added later are
# included), pinning torch to the version already in the image so that pip can neither replace nor "upgrade" the
# CUDA build; the last step fails the build if torch changed anyway or lost its CUDA support.
RUN set -eux; \
    torch_version="$(python -c 'import importlib.metadata as m; print(m.version("torch"))')"; \
    echo "torch==${torch_version}" > /tmp/torch-constraint.txt; \
    extras="$(python -c 'import tomllib; p = tomllib.load(open("pyproject.toml", "rb")); print(",".join(sorted(p["project"].get("optional-dependencies", {}))))')"; \
    spec="."; if [ -n "${extras}" ]; then spec=".[${extras}]"; fi; \
    pip install --no-cache-dir --constraint /tmp/torch-constraint.txt --editable "${spec}"; \
    python -c 'import importlib.metadata as m, sys, torch; v = m.version("torch"); ok = v == sys.argv[1] and torch.version.cuda; print("torch", v, "CUDA", torch.version.cuda); sys.exit(0 if ok else "torch was replaced or has no CUDA")' "${torch_version}"; \
    rm -f /tmp/torch-constraint.txt

COPY docker/entry.sh /entry.sh
RUN chmod 0755 /entry.sh
ENTRYPOINT ["/entry.sh"]
