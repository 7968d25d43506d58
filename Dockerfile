# One container: python server.py, its SQLite file on a volume, health checked on /healthz.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
# DejaVu Sans: the font embedded in invoice PDFs (so "₹" and "€" print).
RUN apt-get update \
    && apt-get install -y --no-install-recommends fonts-dejavu-core \
    && rm -rf /var/lib/apt/lists/*
RUN useradd --create-home --uid 10001 engine \
    && mkdir -p /data \
    && chown engine:engine /data

COPY pyproject.toml README.md ./
COPY engine ./engine
COPY adapters ./adapters
COPY ordering ./ordering
COPY server.py ./
RUN pip install .
COPY flows ./flows

USER engine
ENV DATABASE_URL=sqlite:////data/engine.sqlite3 \
    MEDIA_DIR=/data/media \
    FLOWS_DIR=/app/flows \
    PORT=8080
VOLUME ["/data"]
EXPOSE 8080

HEALTHCHECK --interval=15s --timeout=3s --start-period=15s --retries=3 \
    CMD python -c "import os, sys, urllib.request; sys.exit(urllib.request.urlopen(f'http://127.0.0.1:{os.environ.get(\"PORT\", \"8080\")}/healthz', timeout=2).status != 200)"

# SIGTERM drains mailboxes and the outbox within 10 s; give it that long.
STOPSIGNAL SIGTERM
CMD ["python", "server.py"]
