// Command kubeadm is the upstream kubeadm of the Kubernetes release pinned in go.mod,
// built from the published modules (kind's node image runs it to bootstrap the cluster).
package main

import (
	"k8s.io/kubernetes/cmd/kubeadm/app"
	kubeadmerrors "k8s.io/kubernetes/cmd/kubeadm/app/util/errors"
)

func main() {
	kubeadmerrors.HandleError(app.Run())
}
