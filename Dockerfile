# syntax=docker/dockerfile:1
# Two stages: build the wheel with the build tools, then install only the wheel into a slim
# runtime image that runs as a non-root user with a read-only root filesystem in mind.
FROM python:3.11-slim AS build
WORKDIR /src
RUN pip install --no-cache-dir build==1.* hatchling==1.*
COPY pyproject.toml README.md ./
COPY operator ./operator
COPY crds ./crds
RUN python -m build --wheel --no-isolation --outdir /dist .

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
COPY --from=build /dist/*.whl /tmp/
RUN pip install --no-cache-dir /tmp/*.whl && rm -f /tmp/*.whl \
    && useradd --uid 10001 --no-create-home --shell /usr/sbin/nologin homeostat
USER 10001:10001
EXPOSE 8080 8081
ENTRYPOINT ["homeostat"]
CMD ["run", "--log-format=json", "--liveness=http://0.0.0.0:8081/healthz"]
