# bitbucket-mirror-exporter container image.
#   docker build -t bitbucket-mirror-exporter:0.1.0 .
#   docker build --build-arg WITH_JAVA=true -t bitbucket-mirror-exporter:0.1.0-jmx .   (for mirrors with `jmx`)
# The Helm chart runs <appVersion>, or <appVersion>-jmx when a mirror in its config reads JMX.

# Pinned to a patch release of the Python the exporter is tested with; pin a digest too in your own builds.
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY exporter ./exporter
COPY alerts ./alerts
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM ${PYTHON_IMAGE}
# JMX polls run jmxquery's jar in a JVM: only the -jmx variant carries a Java runtime (about 200 MB more).
# git compares the git reference mirrors with their remotes (git_mirrors) and verifies refs (verify_refs).
ARG WITH_JAVA=false
RUN apt-get update \
    && apt-get install -y --no-install-recommends git \
    && if [ "$WITH_JAVA" = "true" ]; then \
      mkdir -p /usr/share/man/man1 \
      && apt-get install -y --no-install-recommends openjdk-17-jre-headless; \
    fi \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 10001 exporter \
    && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin exporter
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-compile /wheels/*.whl && rm -rf /wheels
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
USER 10001:10001
EXPOSE 9879
ENTRYPOINT ["bitbucket-mirror-exporter"]
CMD ["--config=/etc/bitbucket-mirror-exporter/config.yml"]
