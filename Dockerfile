# Image for Docker / Kubernetes work pools (see docs/DEPLOYMENTS.md). CPU torch by default; for GPUs build FROM an
# image with CUDA and install the matching torch wheel first.
FROM python:3.11-slim
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev git && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/st-workflow
COPY pyproject.toml constraints.txt README.md ./
COPY st_workflow ./st_workflow
COPY configs ./configs
COPY prefect.yaml ./
RUN pip install --no-cache-dir --extra-index-url https://download.pytorch.org/whl/cpu -c constraints.txt .
ENV PREFECT_LOGGING_EXTRA_LOGGERS=st_workflow \
    TOKENIZERS_PARALLELISM=false \
    ST_WORKFLOW_HOME=/opt/st-workflow
