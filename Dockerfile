# syntax=docker/dockerfile:1
# Two stages: build the wheel and install it with its dependencies into a virtual environment, then
# copy only that environment into a runtime image of the same base, with no build tools in it. It
# runs as a non-root user with a read-only root filesystem.
#
# BASE_IMAGE is any Debian-like image with python3 (3.11+) and its venv module: the public
# python:3.11-slim by default; on machines with no registry, tests/cluster/images.py passes a
# bookworm image it builds itself (ADR 0018). Both stages must use the same base, since a venv
# refers to its interpreter by path.
ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS build
ENV PYTHONDONTWRITEBYTECODE=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
# A venv, not the system pip: Debian's python3 has no pip and refuses system installs (PEP 668).
RUN python3 -m venv /opt/build \
    && /opt/build/bin/pip install build==1.* hatchling==1.*
COPY pyproject.toml README.md ./
COPY operator ./operator
COPY crds ./crds
RUN /opt/build/bin/python -m build --wheel --no-isolation --outdir /dist . \
    && python3 -m venv /opt/homeostat \
    && /opt/homeostat/bin/pip install /dist/*.whl \
    && /opt/homeostat/bin/pip uninstall --yes pip setuptools

FROM ${BASE_IMAGE}
# Bytecode was compiled at install time; at run time the root filesystem is read-only.
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PATH=/opt/homeostat/bin:$PATH
COPY --from=build /opt/homeostat /opt/homeostat
# Appended rather than useradd: Debian's minbase has no passwd package. No home directory is used.
RUN echo 'homeostat:x:10001:10001:homeostat:/nonexistent:/usr/sbin/nologin' >> /etc/passwd \
    && echo 'homeostat:x:10001:' >> /etc/group
USER 10001:10001
EXPOSE 8080 8081
ENTRYPOINT ["homeostat"]
CMD ["run", "--log-format=json", "--liveness=http://0.0.0.0:8081/healthz"]
