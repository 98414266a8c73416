// Command daprd is Dapr's sidecar, built from the dapr/dapr module for the
// end-to-end tests of this component.
package main

import "github.com/dapr/dapr/cmd/daprd/app"

func main() { app.Run() }
