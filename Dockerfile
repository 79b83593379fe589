# The studio's image: what the inference router inside a cluster runs (the extension's
# kstudio-router Deployment, image STUDIO_ROUTER_IMAGE), and the studio itself in a pod.
#   docker build -t registry.example.com/kubestudio:0.1.0 .
FROM python:3.11-slim
WORKDIR /app
COPY . .
RUN pip install --no-cache-dir ./cli . \
    && useradd --uid 10001 --no-create-home kstudio \
    && mkdir -p var && chown kstudio var
ENV DJANGO_SETTINGS_MODULE=studio.settings PYTHONUNBUFFERED=1
USER 10001
EXPOSE 8000
# As `make run` does: the database brought up to date (a fresh volume, or a new release's
# migrations) and seeded (once: an admin password generated is printed to the log),
# then served. The router's Deployment runs a command of its own.
CMD ["sh", "-c", "python manage.py migrate --noinput && python manage.py seed && exec python manage.py serve --host 0.0.0.0"]
