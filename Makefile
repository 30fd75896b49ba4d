# s3replicad: build, test, demo, benchmark, install.
PREFIX  ?= /usr/local
DESTDIR ?=
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
GO      ?= go

.PHONY: build test testenv fuzz demo bench bench-scale bench-cluster soak install deb clean

build:
	$(GO) build -trimpath -ldflags "-X main.version=$(VERSION)" -o bin/s3replicad ./cmd/s3replicad

# Installs the local S3/SQS servers on first use, then runs every test
# (unit, integration against the real servers, deploy checks).
test: testenv
	$(GO) vet ./...
	CI=$${CI:-} $(GO) test -count=1 -timeout 12m ./...
	./scripts/check-deploy.sh

testenv:
	./scripts/testenv.sh

fuzz:
	$(GO) test ./engine/event -run '^$$' -fuzz FuzzDecode -fuzztime 60s

demo: testenv build
	$(GO) run ./internal/demo

# s3replicad at scale: a drain of 100,000 small objects beside rclone, and
# a state file of 1,000,000 operations; see README. SCALEFLAGS passes
# options, e.g. SCALEFLAGS='-objects 20000 -state-ops 0'.
bench-scale: testenv build
	$(GO) run ./internal/benchscale $(SCALEFLAGS)

# The cluster mode's scaling: the same backlog drained by one node and by
# three, each bound by a destination that answers slowly; prints the ratio
# and the DynamoDB requests per replicated version. CLUSTERFLAGS passes
# options, e.g. CLUSTERFLAGS='-objects 1200 -latency 100ms'.
bench-cluster: testenv build
	$(GO) run ./internal/benchcluster $(CLUSTERFLAGS)

# The kill loop at length: KILLS kill -9s (default 50) while a mixed
# workload is replicated, then the strict exact-replica check.
# SEED=N replays a run (the seed is printed).
KILLS ?= 50
soak: testenv
	CI=true S3REPLICAD_KILLS=$(KILLS) S3REPLICAD_KILL_SEED=$(SEED) $(GO) test -count=1 -timeout 30m -run 'TestKillLoop' -v ./e2e/ | grep -E 'kill loop|(killloop|strict)_test.go:[0-9]+:|^(---|ok|FAIL|PASS)'

# s3replicad against rclone between the local servers, then restore
# against backfill and rclone; see README. BENCHFLAGS and RESTOREFLAGS pass
# options, e.g. BENCHFLAGS='-rounds 5 -memcheck-size 0'.
bench: testenv build
	$(GO) run ./internal/bench $(BENCHFLAGS)
	$(GO) run ./internal/benchrestore $(RESTOREFLAGS)

# The configuration is readable by the service's dynamic user and holds no
# secret; the secrets go to the environment file, which only root reads.
# Existing files are kept.
install: build
	install -D -m 0755 bin/s3replicad $(DESTDIR)$(PREFIX)/bin/s3replicad
	install -D -m 0644 deploy/systemd/s3replicad.service $(DESTDIR)/etc/systemd/system/s3replicad.service
	sed -i 's#/usr/local/bin/s3replicad#$(PREFIX)/bin/s3replicad#' $(DESTDIR)/etc/systemd/system/s3replicad.service
	@if [ ! -e $(DESTDIR)/etc/s3replicad/config.yaml ]; then \
		install -D -m 0644 deploy/config.example.yaml $(DESTDIR)/etc/s3replicad/config.yaml; \
	else echo "keeping existing $(DESTDIR)/etc/s3replicad/config.yaml"; \
		if [ -z "$$(find $(DESTDIR)/etc/s3replicad/config.yaml -perm -0004)" ]; then \
			echo "warning: $(DESTDIR)/etc/s3replicad/config.yaml is not readable by the service's user: move its secrets to /etc/s3replicad/env and chmod 0644 it" >&2; fi; fi
	@if [ ! -e $(DESTDIR)/etc/s3replicad/env ]; then \
		install -D -m 0600 deploy/env.example $(DESTDIR)/etc/s3replicad/env; \
	else echo "keeping existing $(DESTDIR)/etc/s3replicad/env"; fi

# A Debian package (binary, unit, example config and environment file as
# conffiles, docs) in build/, made with nfpm.
NFPM_VERSION = v2.45.2
ARCH    ?= $(shell $(GO) env GOARCH)
DEBVERSION ?= $(shell echo "$(VERSION)" | sed -e 's/^v//' -e 's/-/+/g' | grep -E '^[0-9]' || echo "0.0.0+$(VERSION)")
deb:
	mkdir -p build/deb .testenv/bin && rm -f build/*.deb
	GOOS=linux GOARCH=$(ARCH) CGO_ENABLED=0 $(GO) build -trimpath -ldflags "-s -w -X main.version=$(VERSION)" -o build/deb/s3replicad ./cmd/s3replicad
	sed 's#/usr/local/bin/s3replicad#/usr/bin/s3replicad#' deploy/systemd/s3replicad.service > build/deb/s3replicad.service
	test -x .testenv/bin/nfpm || GOBIN=$(CURDIR)/.testenv/bin $(GO) install github.com/goreleaser/nfpm/v2/cmd/nfpm@$(NFPM_VERSION)
	ARCH=$(ARCH) VERSION=$(DEBVERSION) .testenv/bin/nfpm package --config deploy/nfpm.yaml --packager deb --target build/
	@ls build/*.deb

clean:
	rm -rf bin build
