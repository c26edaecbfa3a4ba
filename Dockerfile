# supportbot image: CPU-only torch, the bundled offline backbone, the sample data.
FROM python:3.11-slim

ENV PIP_NO_CACHE_DIR=1 \
    PYTHONUNBUFFERED=1 \
    HF_HUB_OFFLINE=1 \
    TOKENIZERS_PARALLELISM=false

WORKDIR /app

# The CPU wheel of torch, pinned: PyPI's default Linux wheel is a multi-GB CUDA build.
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0

COPY pyproject.toml README.md ./
COPY bot bot
COPY training training
COPY connectors connectors
RUN pip install .

COPY data data

EXPOSE 8080 5055
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
  CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2)"

CMD ["supportbot", "serve", "--host", "0.0.0.0", "--port", "8080"]
