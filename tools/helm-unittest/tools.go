//go:build tools

// Package tools records the helm-unittest command as a dependency of this pin module.
package tools

import _ "github.com/helm-unittest/helm-unittest/cmd/helm-unittest"
