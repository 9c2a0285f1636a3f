// Command etcd is the etcd server at the version pinned by the Kubernetes
// release this module requires (see go.mod).
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
