# The zeroserve image: one image for the activator, the autoscaler, the queue-proxy sidecar, the
# built-in model server with every format's library (python -m modelserver; its storage init step,
# python -m modelserver.storage) and the example model servers (deploy/ and `zeroserve render` pick
# the component by its command: python -m activator | …).
# Build: docker build -t <registry>/zeroserve:<tag> .   (no Docker engine on the development
# machines: this file is checked by review, not by CI.)

# Stage 1: wheels for zeroserve (its dataplane compiled with Cython, which needs a C compiler)
# and every dependency.
FROM python:3.11 AS build
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY metrics metrics
COPY cluster cluster
COPY dataplane dataplane
COPY queue_proxy queue_proxy
COPY activator activator
COPY autoscaler autoscaler
COPY zeroserve zeroserve
COPY modelserver modelserver
RUN pip wheel --no-cache-dir --wheel-dir /wheels '.[models]' \
    && python -c "import zipfile, glob; w = glob.glob('/wheels/zeroserve-*.whl')[0]; \
assert any(n.startswith('dataplane/server.') and n.endswith('.so') for n in zipfile.ZipFile(w).namelist()), 'dataplane not compiled'"

# Stage 2: the runtime, no compiler. The packages live in site-packages (the compiled dataplane
# among them); /app holds the example model servers only, so no source copy shadows them.
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PYTHONPATH=/app
WORKDIR /app
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index /wheels/*.whl && rm -rf /wheels
COPY examples examples
# Non-root, matching the manifests' runAsNonRoot / runAsUser and a read-only root filesystem.
USER 65532:65532
ENTRYPOINT ["python", "-m"]
CMD ["activator"]
