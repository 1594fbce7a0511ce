# Build the manager as a static binary, then ship it alone on a distroless base that runs
# as non-root: make docker-build IMG=... where a Docker engine runs. None runs on
# packhost's own build machines, so this path is untested there; `make image` (hack/image)
# builds an equivalent image without Docker, and its test runs it.
FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY api/ api/
COPY cmd/ cmd/
COPY controllers/ controllers/
COPY dispatcher/ dispatcher/
COPY internal/ internal/
COPY runtime/ runtime/
COPY source/ source/
COPY state/ state/
RUN CGO_ENABLED=0 GOOS=linux go build -trimpath -ldflags="-s -w" -o /manager ./cmd/manager

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /manager /manager
USER 65532:65532
ENTRYPOINT ["/manager"]
