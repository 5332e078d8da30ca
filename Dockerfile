# manallm served by daphne (WEB_CONCURRENCY processes on one socket; SIGTERM drains for
# SHUTDOWN_GRACE seconds). Configure with the environment variables of the README.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PORT=3025 \
    DATABASE_URL=sqlite:////data/db.sqlite3 \
    PROMETHEUS_MULTIPROC_DIR=/tmp/manallm-metrics

WORKDIR /app
COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt
COPY . .

RUN mkdir -p /data
VOLUME ["/data"]
EXPOSE 3025

CMD ["sh", "-c", "rm -rf \"$PROMETHEUS_MULTIPROC_DIR\" && mkdir -p \"$PROMETHEUS_MULTIPROC_DIR\" && python manage.py migrate --noinput && python manage.py import_aliases_if_empty && exec python -m manallm.serve --host 0.0.0.0 --port \"$PORT\""]
