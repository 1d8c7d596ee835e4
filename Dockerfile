# One image, three entry points (controller, gateway, sidecar). Used by `make kind-e2e`;
# not built on the development machines, which have no Docker engine.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY operator ./operator
COPY sidecar ./sidecar
RUN pip install --no-cache-dir ".[server]" && useradd --uid 10001 --no-create-home securekeys
USER 10001
ENTRYPOINT ["python", "-m"]
