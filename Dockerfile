# The loupe image: a binary built on the host (`cargo build --release -p loupe-cli`, or the
# CUDA build of scripts/build_cuda.sh for the GPU profile) on a Debian base, with the
# repository's dictionaries. The model and corpora are not in the image: they are mounted
# at $LOUPE_HOME (compose mounts the host's; Kubernetes a volume), as setup lays them out.
#   docker build -t loupe .                      (CPU)
#   docker build -t loupe:cuda --build-arg LOUPE_BINARY=target/release/loupe-cuda .
ARG BASE=debian:bookworm-slim
FROM ${BASE}
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/*
ARG LOUPE_BINARY=target/release/loupe
COPY ${LOUPE_BINARY} /usr/local/bin/loupe
COPY dictionaries /opt/loupe/dictionaries
ENV LOUPE_HOME=/var/lib/loupe
# Object storage settings come from the usual AWS_* variables (see docker-compose.yml).
EXPOSE 50051
ENTRYPOINT ["loupe"]
CMD ["--help"]
