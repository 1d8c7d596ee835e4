# The project image `secure-keys:dev` for kind users (`make image`; `make kind-e2e`
# loads it). One image for the controller, the gateway and the sidecar: each is an
# entry point of the wheel, on PATH from the virtual environment.
#
# The local node builds the same contents without Docker (make image-local:
# devtools/secure_keys_dev/image.py): the same Debian release and packages, the same
# lock file, a wheel from the same sources, the same install script, user and
# environment. tests/unit/test_image_recipe.py fails if the two recipes drift apart.

# The wheel, built from the sources (a build writes into its source tree: not the final stage).
FROM debian:bookworm-slim AS wheel
RUN apt-get update \
 && apt-get install --yes --no-install-recommends python3 python3-venv \
 && python3 -m venv /build
COPY pyproject.toml README.md /src/
COPY operator /src/operator
COPY sidecar /src/sidecar
RUN /build/bin/pip wheel --no-cache-dir --no-deps --wheel-dir /dist /src

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install --yes --no-install-recommends python3 python3-venv libstdc++6 \
 && rm -rf /var/lib/apt/lists/*
COPY scripts/image-venv.sh requirements/image.lock /tmp/image/
COPY --from=wheel /dist/ /tmp/image/dist/
RUN sh /tmp/image/image-venv.sh /opt/secure-keys 65532 server,aws,gcp,azure,pkcs11 /tmp/image/image.lock /tmp/image/dist \
 && rm -rf /tmp/image
ENV PATH=/opt/secure-keys/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    VIRTUAL_ENV=/opt/secure-keys \
    PYTHONUNBUFFERED=1
USER 65532:65532
WORKDIR /
CMD ["secure-keys", "--help"]
