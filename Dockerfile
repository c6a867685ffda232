# Image of the changes platform; docker-compose.yml builds it.
FROM golang:1.26-bookworm AS build
WORKDIR /src
# Modules first, so that a source change does not download them again.
COPY go.mod go.sum ./
RUN go mod download
COPY . .
# Static binary: the runtime image has no libc.
ENV CGO_ENABLED=0
RUN go build -trimpath -o /out/changes ./cmd/changes && mkdir -p /out/storage

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/changes /changes
# A new named volume takes this directory's owner, so the nonroot user can write its storage.
COPY --from=build --chown=65532:65532 /out/storage /var/lib/changes
USER 65532:65532
EXPOSE 9464
ENTRYPOINT ["/changes"]
