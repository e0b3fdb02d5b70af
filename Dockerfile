# echolab's two images, from one build: `--target server` (every echo server;
# `echolab serve NAME` picks one) and `--target locust` (Locust master and
# workers, with the locustfiles). Build from the repo root:
#   docker build --target server -t echolab-server .
#
# The builder makes one virtualenv per image; the final stages are the slim
# base plus that venv, so no pip cache, build tools or sources reach an image
# that runs. A venv's scripts name its path in their #! line: each is copied
# to the path it was built at.
#
# PYTHON_IMAGE is the Python every stage runs on, a CPython image with pip:
#   docker build --build-arg PYTHON_IMAGE=python:3.13-slim --target server -t echolab-server:3.13 .
# docs/interpreters.md builds a free-threaded one.
ARG PYTHON_IMAGE=python:3.11-slim
FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
# The pinned dependencies first, from pyproject's lists: these layers are
# rebuilt only when pyproject.toml changes, not on every source edit.
COPY pyproject.toml ./
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
print('\n'.join(p['dependencies']), file=open('server.txt', 'w')); \
print('\n'.join(p['dependencies'] + p['optional-dependencies']['loadtest']), file=open('locust.txt', 'w'))" \
 && python -m venv /opt/server && /opt/server/bin/pip install -r server.txt \
 && python -m venv /opt/locust && /opt/locust/bin/pip install -r locust.txt
COPY README.md ./
COPY src ./src
# pip and setuptools build, they do not run: leave them behind.
RUN for venv in /opt/server /opt/locust; do \
      $venv/bin/pip install --no-deps . && $venv/bin/pip uninstall --yes pip setuptools; \
    done

FROM ${PYTHON_IMAGE} AS server
RUN useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin echolab
COPY --from=builder /opt/server /opt/server
# Inside its container every server listens on 9090 (echo) and 8000 (/metrics), on
# every interface of the container; which host ports publish them is compose's choice.
ENV PATH=/opt/server/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 \
    ECHO_HOST=0.0.0.0 ECHO_PORT=9090 ECHO_METRICS_PORT=8000
USER echolab
EXPOSE 9090 8000
# Exec form: echolab is PID 1 (or tini's child with `init: true`) and gets
# SIGTERM itself, so `docker stop` drains in-flight requests (ECHO_DRAIN_TIMEOUT).
ENTRYPOINT ["echolab"]
CMD ["serve", "threaded"]

FROM ${PYTHON_IMAGE} AS locust
RUN useradd --system --uid 10001 --user-group --create-home --shell /usr/sbin/nologin locust
COPY --from=builder /opt/locust /opt/locust
COPY loadtest/ /app/
ENV PATH=/opt/locust/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 \
    LOCUST_LOCUSTFILE=/app/locustfile.py LOCUST_METRICS_PORT=9646
USER locust
WORKDIR /home/locust
# 8089 web UI (master), 5557 master <-> workers, 9646 /metrics (every process).
EXPOSE 8089 5557 9646
ENTRYPOINT ["locust"]
