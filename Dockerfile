# The cluster image for launch/k8s.sh (and any container runtime): the checkout at
# /workspace/dcsp_dist, set up with `make setup GPU=1` exactly as on a bare machine.
# A CUDA 12.9 *devel* base, because Horovod's NCCL build needs nvcc; it also carries NCCL,
# which the set-up then uses as the system NCCL. Build: `make image` (needs Docker).
FROM nvidia/cuda:12.9.1-cudnn-devel-ubuntu24.04
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update && apt-get install -y --no-install-recommends \
        python3 python3-venv python3-dev build-essential make git openssh-client openssh-server \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /workspace/dcsp_dist
COPY . .
RUN make setup GPU=1
ENV PATH=/workspace/dcsp_dist/.venv/bin:$PATH
