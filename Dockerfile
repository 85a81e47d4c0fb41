# One image for every splitinfer daemon: the front-end, server nodes, the Model Pool and the Result Store.
#   docker build -t splitinfer:0.1.0 .
#   docker run --rm -p 50051:50051 splitinfer:0.1.0 python -m splitinfer.frontend --host 0.0.0.0 --port 50051 ...
# The Kubernetes manifests in deploy/kubernetes/ use this image; tests/unit/test_deploy.py checks both.
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /opt/splitinfer

# The CPU build of torch first, from PyTorch's own index (PyPI's default wheel carries CUDA, several GB).
RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu

COPY pyproject.toml README.md ./
COPY proto proto
COPY splitinfer splitinfer
COPY server_node server_node
COPY edge_agent edge_agent

# Generated protobuf code is not in git: generate it here, as `make proto` does, then install.
RUN pip install grpcio-tools==1.81.1 \
 && python -m grpc_tools.protoc -Iproto --python_out=. --pyi_out=. --grpc_python_out=. \
      proto/splitinfer/v1/*.proto proto/splitinfer/inference/*.proto \
 && pip install ".[server]" \
 && useradd --system --uid 10001 --home-dir /var/lib/splitinfer --create-home splitinfer

USER 10001
WORKDIR /var/lib/splitinfer
EXPOSE 50051 50052 50053 50060 9100
CMD ["python", "-m", "splitinfer.frontend", "--help"]
