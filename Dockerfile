# syntax=docker/dockerfile:1
# keyvault's image: dependencies from the hash-pinned lock, run as an unprivileged user.
# The Python minor version must match the one requirements.lock was compiled with (see README).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/keyvault
WORKDIR /src
# The lock alone first, so the dependency layer is rebuilt only when the lock changes. It has the
# pkcs11 extra (python-pkcs11), so the image can use an HSM seal with a mounted vendor module.
COPY requirements.lock ./
RUN /opt/keyvault/bin/pip install --require-hashes --no-deps -r requirements.lock
COPY pyproject.toml README.md ./
COPY src ./src
# --no-deps: everything it needs is already installed from the lock. The build backend
# (setuptools) lives in pip's throw-away build environment and never reaches the image.
RUN /opt/keyvault/bin/pip install --no-deps .

FROM ${PYTHON_IMAGE} AS runtime
ENV PATH=/opt/keyvault/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
RUN useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin keyvault
COPY --from=build /opt/keyvault /opt/keyvault
# The migrations are inside the installed package; nothing else of the checkout is needed.
WORKDIR /app
USER 10001:10001
EXPOSE 8000
# python, not curl: the slim image has no curl. Plain HTTP on the container's own loopback.
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2).status != 200)"]
ENTRYPOINT ["keyvault"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]
