// Command coredns is upstream CoreDNS at the version pinned in go.mod, with only the
// plugins kubeadm's Corefile uses (plus a few cheap ones), in upstream plugin.cfg order.
// It stands in for registry.k8s.io/coredns/coredns in the offline kind node image.
package main

import (
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"

	_ "github.com/coredns/coredns/plugin/bind"
	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/debug"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/forward"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/hosts"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/loadbalance"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/loop"
	_ "github.com/coredns/coredns/plugin/metrics"
	_ "github.com/coredns/coredns/plugin/ready"
	_ "github.com/coredns/coredns/plugin/reload"
	_ "github.com/coredns/coredns/plugin/rewrite"
	_ "github.com/coredns/coredns/plugin/whoami"
)

func init() {
	// Upstream's order (plugin.cfg) restricted to the plugins imported above.
	dnsserver.Directives = []string{
		"reload", "bind", "debug", "ready", "health", "prometheus", "errors", "log",
		"loadbalance", "cache", "rewrite", "hosts", "kubernetes", "loop", "forward", "whoami",
	}
}

func main() { coremain.Run() }
