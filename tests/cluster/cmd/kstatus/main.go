// kstatus reads Kubernetes objects (a stream of JSON documents) on stdin and
// prints, for each, one JSON line with the status sigs.k8s.io/cli-utils'
// kstatus computes for it: Current, InProgress, Failed, Terminating, ...
// It is how tools such as Flux, Config Sync and kapply judge a resource.
package main

import (
	"encoding/json"
	"fmt"
	"os"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
)

func main() {
	in := json.NewDecoder(os.Stdin)
	out := json.NewEncoder(os.Stdout)
	for in.More() {
		var raw json.RawMessage
		if err := in.Decode(&raw); err != nil {
			fmt.Fprintln(os.Stderr, "kstatus:", err)
			os.Exit(2)
		}
		obj := &unstructured.Unstructured{} // numbers as int64, as the API server sends them
		if err := obj.UnmarshalJSON(raw); err != nil {
			fmt.Fprintln(os.Stderr, "kstatus:", err)
			os.Exit(2)
		}
		result, err := status.Compute(obj)
		if err != nil {
			fmt.Fprintln(os.Stderr, "kstatus:", err)
			os.Exit(2)
		}
		if err := out.Encode(map[string]string{
			"status": result.Status.String(), "message": result.Message,
		}); err != nil {
			fmt.Fprintln(os.Stderr, "kstatus:", err)
			os.Exit(2)
		}
	}
}
