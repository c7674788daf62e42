# trixie: Debian's restic there is 0.18 (bookworm's is 0.14, whose incremental backups are
# slower; both are supported and tested).
FROM python:3.11-slim-trixie

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1

# restic for system.backups.store: restic (deduplicated backups).
RUN apt-get update && apt-get install -y --no-install-recommends restic ca-certificates \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /src
COPY pyproject.toml README.md ./
COPY wingsbak ./wingsbak
RUN pip install . && rm -rf /src \
    && useradd --system --uid 988 --home-dir /var/lib/pterodactyl --shell /usr/sbin/nologin pterodactyl \
    && mkdir -p /var/lib/pterodactyl/volumes /var/lib/pterodactyl/backups /etc/pterodactyl \
    && chown -R pterodactyl:pterodactyl /var/lib/pterodactyl

USER pterodactyl
WORKDIR /var/lib/pterodactyl
EXPOSE 8080
VOLUME ["/var/lib/pterodactyl/volumes", "/var/lib/pterodactyl/backups"]
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD python -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('WINGSBAK_PORT', '8080') + '/healthz', timeout=4)" || exit 1
ENTRYPOINT ["wingsbak", "serve"]
