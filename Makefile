# secure-keys developer entry points. `make test` is what CI runs (.ci/run).
# Everything is installed from this repository's own files into .venv at the root.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Development-only code (the local cluster, the demo) lives in devtools/, outside the wheel.
DEV := PYTHONPATH=$(CURDIR)/devtools $(BIN)/python
# Re-install only when the dependency declaration changes.
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: test lint typecheck imports unit bench demo clean help control-plane cluster-up cluster-down e2e kind-e2e image

help:
	@echo "make test   - set up, build the control plane, run ruff, mypy --strict, import-linter, pytest"
	@echo "make demo   - set up, start a local Kubernetes, run the controller, seal and rotate keys"
	@echo "make bench  - run the benchmarks in bench/"
	@echo "make kms-servers - build/install the KMS test servers (local-kms, Cloud KMS emulator, SoftHSM2)"
	@echo "make helm   - build helm and helm-unittest into build/bin; make chart - regenerate deploy/ and the chart's CRDs"
	@echo "make control-plane - build etcd/kube-apiserver/kube-controller-manager/kubectl/kubelet/kube-scheduler/kube-proxy/coredns"
	@echo "make node   - install the node's Debian packages (as root) and build its images"
	@echo "make cluster-up / cluster-down - start / stop a local cluster (with a node when possible)"
	@echo "make e2e KUBECONFIG=... - run the e2e suite against an existing cluster"
	@echo "make kind-e2e - create a kind cluster, load the image, run e2e (needs Docker)"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# pip's output goes to stderr, so that `make -s cluster-up` prints only the kubeconfig path.
$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet --upgrade pip >&2
	$(BIN)/python -m pip install --quiet -e ".[server,test,aws,gcp,pkcs11,azure,keychain,totp]" >&2
	rm -f $(VENV)/.installed-*
	touch $@

lint: $(STAMP)
	$(BIN)/ruff check operator sidecar devtools tests bench tools/azurekv
	$(BIN)/ruff format --check operator sidecar devtools tests bench tools/azurekv

typecheck: $(STAMP)
	$(BIN)/mypy

imports: $(STAMP)
	PYTHONPATH=$(CURDIR)/devtools $(BIN)/lint-imports

unit: $(STAMP) control-plane node kms-servers helm
	$(BIN)/pytest

test: lint typecheck imports unit

# etcd, kube-apiserver, kube-controller-manager and kubectl from the Go modules
# pinned in tools/, into build/bin. Rebuilt only when missing or re-pinned.
control-plane:
	@scripts/build-control-plane.sh

# helm (helm.sh/helm/v4) and helm-unittest from tools/helm and tools/helm-unittest into
# build/bin; rebuilt only when missing or re-pinned.
.PHONY: helm chart
helm:
	@scripts/build-helm.sh

# Regenerate what comes from the chart or for it: its CRD templates (from crds/), deploy/
# (helm template) and the values table of its README. A unit test fails until this runs.
chart: $(STAMP) helm
	$(DEV) -m secure_keys_dev.chart

# The KMS servers the provider tests run against (local-kms for AWS, the Cloud KMS
# emulator, SoftHSM2), built from tools/ into build/bin or installed; all chatter to stderr.
.PHONY: kms-servers
kms-servers:
	@scripts/build-kms-servers.sh

# The local node's Debian packages (containerd, runc, CNI plugins, image tools) and its
# images; kubelet and kube-scheduler come with control-plane. Where packages cannot be
# installed (not root, not Debian) it says so and goes on: pod tests then skip.
# Everything goes to stderr (see cluster-up).
.PHONY: node
node: $(STAMP)
	@if [ "$$(id -u)" -ne 0 ]; then echo "make: not root, so no local node: pod tests skip" >&2; \
	else status=0; scripts/install-node-packages.sh || status=$$?; \
	if [ $$status -eq 2 ]; then echo "make: no local node on this machine (above: why)" >&2; \
	elif [ $$status -ne 0 ]; then exit $$status; \
	else scripts/build-image.sh >&2; fi; fi

# A long-lived local cluster. `make -s cluster-up` prints one line, the path of its admin
# kubeconfig, once the API server answers /readyz: export KUBECONFIG=$(make -s cluster-up)
# POD_NETWORK=1: the node gets its own network namespace, a pod network, kube-proxy and
# cluster DNS (pods without hostNetwork, Services by name; docs/local-cluster-network.md).
CLUSTER_STATE ?= $(CURDIR)/build/cluster
POD_NETWORK ?=
cluster-up: $(STAMP) control-plane node
	@$(DEV) -m secure_keys_dev up --state-dir="$(CLUSTER_STATE)" $(if $(POD_NETWORK),--pod-network)

cluster-down: $(STAMP)
	@$(DEV) -m secure_keys_dev down --state-dir="$(CLUSTER_STATE)"

# The e2e suite against an existing cluster: make e2e KUBECONFIG=/path/to/kubeconfig
e2e: $(STAMP)
	@test -n "$(KUBECONFIG)" || { echo "set KUBECONFIG=/path/to/kubeconfig"; exit 2; }
	$(BIN)/pytest tests/e2e --kubeconfig="$(KUBECONFIG)"

# Needs Docker and kind (not available on the development machines; see README).
KIND_CLUSTER ?= secure-keys
IMAGE ?= secure-keys:dev
image:
	docker build -t $(IMAGE) .

# The same image without Docker (plus the pause and busybox images of the local node),
# as OCI archives in build/image/, rebuilt only when an input changes. Needs root.
.PHONY: image-local image-lock
image-local: $(STAMP)
	@scripts/build-image.sh

# Regenerate requirements/image.lock (the image's pinned dependencies) from pyproject.toml.
image-lock: $(STAMP)
	$(DEV) -m secure_keys_dev.image lock

kind-e2e: $(STAMP) image
	kind create cluster --name $(KIND_CLUSTER) --config kind-config.yaml
	kind load docker-image $(IMAGE) --name $(KIND_CLUSTER)
	mkdir -p build && kind get kubeconfig --name $(KIND_CLUSTER) > build/kind.kubeconfig
	$(MAKE) e2e KUBECONFIG=$(CURDIR)/build/kind.kubeconfig

bench: $(STAMP) control-plane kms-servers
	$(BIN)/python bench/envelope.py
	$(DEV) bench/controller.py
	$(DEV) bench/kms.py
	$(DEV) bench/delivery.py
	$(BIN)/python bench/local_store.py
	$(DEV) bench/pod_network.py
	$(DEV) bench/scale.py

demo: $(STAMP) control-plane node helm
	$(DEV) -m secure_keys_dev.demo

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
