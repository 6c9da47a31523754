# Two entry points for a fresh Debian machine (run as root):
#   make demo   install what is missing, build, start the demo proxy
#   make test   install what is missing, build, run every test
SHELL := /bin/bash
SWIFT ?= swift
# Build and run-time needs, plus the real clients and servers the tests drive.
APT_PACKAGES := pkg-config libbpf-dev libelf-dev libssl-dev libc-ares-dev bpftool iproute2 procps curl wrk util-linux systemd haproxy redis-server redis-tools nutcracker dnsmasq-base dnsutils
# The tests parse /metrics with Prometheus' own parser, validate the Kubernetes
# manifests, and speak WebSocket (websockets, wsproto) and Redis (redis-py) through the proxy.
PYTHON_PACKAGES := prometheus-client kubernetes-validate websockets wsproto redis dnspython
BENCH_PACKAGES := haproxy nginx-light libnginx-mod-stream iperf3 wrk python3 nutcracker redis-server redis-tools gcc libssl-dev
SLUICE := .build/debug/sluice
# Fuzzers under Fuzz/Sources/Fuzz<Name>, each run for FUZZ_SECONDS by `make fuzz`.
FUZZERS ?= config admin http proxy resp
FUZZ_SECONDS ?= 60

.PHONY: setup build demo test bench-setup fuzz clean

setup:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing:" $$missing; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi
	@python3 -c "import prometheus_client, kubernetes_validate, websockets, wsproto, redis" 2>/dev/null \
		|| python3 -m pip install --quiet --disable-pip-version-check $(PYTHON_PACKAGES) 2>/dev/null \
		|| python3 -m pip install --quiet --disable-pip-version-check --break-system-packages $(PYTHON_PACKAGES)
	@if ! mountpoint -q /sys/fs/bpf; then \
		mount -t bpf bpf /sys/fs/bpf 2>/dev/null && echo "mounted bpffs at /sys/fs/bpf" \
		|| echo "note: could not mount bpffs at /sys/fs/bpf (BPF features need root)"; \
	fi

build: setup
	$(SWIFT) build

demo: build
	$(SLUICE) demo

# Tests/run bounds the suite in time and stops whatever a test left running.
test: setup
	$(SWIFT) build
	Tests/run $(SWIFT) test

# Runs each fuzzer in FUZZERS for FUZZ_SECONDS (those not written yet are skipped);
# stops at the first that finds a crash (saved under .build-fuzz/artifacts/).
fuzz:
	@for f in $(FUZZERS); do \
		if [ ! -d "Fuzz/Sources/Fuzz$${f^}" ]; then echo "fuzz: no Fuzz/Sources/Fuzz$${f^}, skipping $$f"; continue; fi; \
		echo "fuzz: $$f for $(FUZZ_SECONDS)s"; \
		Fuzz/run "$$f" "$(FUZZ_SECONDS)" || exit 1; \
	done

bench-setup: setup
	@missing=$$(for p in $(BENCH_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; fi

clean:
	rm -rf .build .build-fuzz
