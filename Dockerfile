# syntax=docker/dockerfile:1
# One image for every SmartTasks component: `smarttasks run <component>` with
# users, tasks, rules-api, notifications, operator, relay or migrate (default: gateway).
#
#   docker build -t smarttasks .
#   docker run --rm smarttasks --help

ARG PYTHON_IMAGE=python:3.11-slim

# --- builder: build the wheel and install it with its dependencies into a venv -------
FROM ${PYTHON_IMAGE} AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /src
# Dependencies first, from pyproject.toml alone: a change to the code reuses this layer.
COPY pyproject.toml ./
RUN python -m venv /opt/smarttasks \
 && python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
      > /tmp/requirements.txt \
 && /opt/smarttasks/bin/pip install --requirement /tmp/requirements.txt

# Then the project itself, as a wheel (hatchling, in pip's isolated build environment).
COPY README.md ./
COPY services ./services
COPY operator ./operator
RUN python -m pip wheel --no-deps --wheel-dir /dist . \
 && /opt/smarttasks/bin/pip install --no-deps /dist/smarttasks-*.whl \
 && /opt/smarttasks/bin/pip check \
 && /opt/smarttasks/bin/pip uninstall --yes pip \
 && /opt/smarttasks/bin/smarttasks --help > /dev/null

# --- runtime: the venv, a non-root user, nothing else --------------------------------
FROM ${PYTHON_IMAGE} AS runtime

LABEL org.opencontainers.image.title="SmartTasks" \
      org.opencontainers.image.description="Task automation: users, tasks, rules API, notifications, operator, relay" \
      org.opencontainers.image.licenses="Apache-2.0"

RUN groupadd --system --gid 10001 smarttasks \
 && useradd --system --uid 10001 --gid smarttasks --home-dir /var/lib/smarttasks \
      --shell /usr/sbin/nologin smarttasks \
 && install -d -o smarttasks -g smarttasks -m 0750 /var/lib/smarttasks

COPY --from=builder /opt/smarttasks /opt/smarttasks

ENV PATH=/opt/smarttasks/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    SMARTTASKS_DATA_DIR=/var/lib/smarttasks

USER 10001:10001
WORKDIR /var/lib/smarttasks
EXPOSE 8000

ENTRYPOINT ["smarttasks"]
CMD ["run", "gateway"]
