# The zeroserve image: one image for the activator, the autoscaler, the queue-proxy sidecar and the
# example model servers (deploy/ picks the component by its command: python -m activator | …).
# Build: docker build -t <registry>/zeroserve:<tag> .   (no Docker engine on the development
# machines: this file is checked by review, not by CI.)
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PYTHONPATH=/app
WORKDIR /app
COPY pyproject.toml README.md ./
COPY metrics metrics
COPY cluster cluster
COPY dataplane dataplane
COPY queue_proxy queue_proxy
COPY activator activator
COPY autoscaler autoscaler
COPY zeroserve zeroserve
COPY examples examples
RUN pip install --no-cache-dir . && rm -rf build *.egg-info
# Non-root, matching the manifests' runAsNonRoot / runAsUser and a read-only root filesystem.
USER 65532:65532
ENTRYPOINT ["python", "-m"]
CMD ["activator"]
