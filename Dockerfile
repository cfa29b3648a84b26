# The pgpilot image: one static binary on an empty base, no shell, run as
# an unprivileged user. Build it with scripts/image.sh, which compiles the
# binary first (CGO_ENABLED=0, -trimpath, version stamped) and passes this
# file a build context holding only that binary and an empty state/ folder:
# `docker build .` on its own has no binary to copy.
#
# Trust roots: Mozilla's are compiled into the binary (roots.go), so the
# image needs no CA bundle and never carries the build machine's.
FROM scratch

ARG VERSION=dev
ARG REVISION=unknown
ARG CREATED=unknown
LABEL org.opencontainers.image.title="pgpilot" \
      org.opencontainers.image.description="Keeps Userpilot company profiles in step with a Postgres table through logical replication" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.source="https://github.com/pgpilot/pgpilot" \
      org.opencontainers.image.documentation="https://github.com/pgpilot/pgpilot#deploy"

COPY pgpilot /pgpilot
# state.dir: the checkpoint, the outbox and the dead letters. Owned by the
# user below, so a new named volume mounted here is writable by it; keep it
# on a volume, or a restart starts over.
COPY --chown=65532:65532 state/ /var/lib/pgpilot/
VOLUME ["/var/lib/pgpilot"]

# Non-root (the distroless "nonroot" uid); no user database needed.
USER 65532:65532
# /metrics, /healthz and /readyz, when the config sets http.listen: :9187.
EXPOSE 9187
ENTRYPOINT ["/pgpilot"]
CMD ["run", "--config", "/etc/pgpilot/pgpilot.yaml"]
