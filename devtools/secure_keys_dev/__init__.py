"""A real Kubernetes control plane on loopback, for tests and the local demo.

`cluster.LocalCluster` runs etcd, kube-apiserver and kube-controller-manager
built from the Go modules pinned under `tools/`; `pki` makes its certificates;
`kubeconfig` writes the files clients use; `access` holds the helpers that work
against any cluster (users via the CSR API, ServiceAccount tokens via
TokenRequest). `python -m secure_keys_dev up|down` backs
`make cluster-up` / `make cluster-down`.
"""
