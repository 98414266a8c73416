//go:build !linux

package natstest

import "syscall"

// dieWithParent has no equivalent outside Linux: a crashed parent leaves its
// children to the cleanup of the next run.
func dieWithParent() *syscall.SysProcAttr { return nil }
