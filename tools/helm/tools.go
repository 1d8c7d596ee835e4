//go:build tools

// Package tools records the helm command as a dependency of this pin module.
package tools

import _ "helm.sh/helm/v4/cmd/helm"
