package natstest

import "syscall"

// dieWithParent makes the kernel kill the child if this process dies, so
// that nothing outlives a crashed test or bench.
func dieWithParent() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
