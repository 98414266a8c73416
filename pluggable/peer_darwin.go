package pluggable

import "golang.org/x/sys/unix"

func socketPeerPID(fd int) int {
	pid, err := unix.GetsockoptInt(fd, unix.SOL_LOCAL, unix.LOCAL_PEERPID)
	if err != nil {
		return 0
	}
	return pid
}

func processGone(pid int) bool { return unix.Kill(pid, 0) == unix.ESRCH }
