// Command coredns is CoreDNS v1.15 with only the plugins the local cluster's DNS
// needs: it serves cluster.local from the API server (kubernetes) and answers
// nothing else. There is deliberately no forward plugin: the node's network
// namespace has no route off the machine, so names outside the cluster get
// SERVFAIL/NXDOMAIN at once instead of a timeout.
package main

import (
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"

	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/ready"
)

// The plugins' order in a request, as in CoreDNS's own plugin.cfg.
var directives = []string{"ready", "health", "errors", "log", "cache", "kubernetes"}

func main() {
	dnsserver.Directives = directives
	coremain.Run()
}
