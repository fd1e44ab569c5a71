# flywheel: one image for every role — flywheel proxy | optimize | canary | prompts | rollout.
# Build stage: a wheel and its dependencies, built where compilers are allowed.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY flywheel ./flywheel
COPY proxy ./proxy
COPY optimizer ./optimizer
COPY deploy ./deploy
RUN pip wheel --no-cache-dir --wheel-dir /wheels ".[propagators]" \
    && pip wheel --no-cache-dir --wheel-dir /wheels "kubernetes>=29"

# Final stage: the wheels installed into a venv, no build tools, not root.
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PATH=/opt/flywheel/bin:$PATH
RUN python -m venv /opt/flywheel
COPY --from=build /wheels /wheels
RUN /opt/flywheel/bin/pip install --no-cache-dir --no-index --find-links /wheels "flywheel[propagators]" kubernetes \
    && rm -rf /wheels \
    && useradd --uid 10001 --no-create-home --shell /usr/sbin/nologin flywheel
USER 10001
EXPOSE 4000
# The proxy's own health endpoint; the other roles are jobs and ignore it.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import urllib.request, sys; urllib.request.urlopen('http://127.0.0.1:4000/healthz', timeout=2); sys.exit(0)"]
ENTRYPOINT ["flywheel"]
CMD ["proxy", "--host", "0.0.0.0", "--port", "4000"]
