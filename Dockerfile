# emr_hub: one image for the API (`serve`), the Celery worker (`worker`) and Celery beat (`beat`).
# The command picks the role; docker-compose.yml runs all three from this image.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    EMR_HUB_DATA_DIR=/var/lib/emr-hub

# Only what the package is built from (pyproject's readme is README.md), not .venv or data.
WORKDIR /tmp/emr-hub-src
COPY pyproject.toml README.md ./
COPY emr_hub ./emr_hub
COPY storage ./storage
RUN pip install . \
    && cd / \
    && rm -rf /tmp/emr-hub-src

# An unprivileged user owning DATA_DIR (a named volume mounted there starts with this owner).
RUN groupadd --system --gid 10001 emr-hub \
    && useradd --system --uid 10001 --gid emr-hub --home-dir /var/lib/emr-hub \
       --no-create-home --shell /usr/sbin/nologin emr-hub \
    && mkdir -p /var/lib/emr-hub \
    && chown emr-hub:emr-hub /var/lib/emr-hub

USER emr-hub
WORKDIR /var/lib/emr-hub

EXPOSE 8000

# Liveness of the API process (slim images have no curl). docker-compose.yml gives the worker
# and beat containers their own checks, and the API a readiness check on /readyz.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]

ENTRYPOINT ["emr-hub"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]
