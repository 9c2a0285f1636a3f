// Command kube-apiserver is the upstream kube-apiserver of the Kubernetes release pinned
// in go.mod, built from the published modules.
package main

import (
	"os"
	_ "time/tzdata" // CronJob time zones without a system tz database

	"k8s.io/component-base/cli"
	_ "k8s.io/component-base/logs/json/register"          // --logging-format=json
	_ "k8s.io/component-base/metrics/prometheus/clientgo" // client-go metrics
	_ "k8s.io/component-base/metrics/prometheus/version"  // version metric
	"k8s.io/kubernetes/cmd/kube-apiserver/app"
)

func main() {
	os.Exit(cli.Run(app.NewAPIServerCommand()))
}
