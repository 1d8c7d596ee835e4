// Command pause is the process that holds a pod sandbox's namespaces open in the
// local node. It does nothing until SIGINT or SIGTERM, then exits 0 at once, so
// deleting a pod does not wait for a kill timeout. As PID 1 of the sandbox it also
// reaps any orphan re-parented to it.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	signals := make(chan os.Signal, 8)
	signal.Notify(signals, syscall.SIGINT, syscall.SIGTERM, syscall.SIGCHLD)
	for received := range signals {
		if received == syscall.SIGCHLD {
			reapOrphans()
			continue
		}
		os.Exit(0)
	}
}

// reapOrphans collects every exited child without blocking.
func reapOrphans() {
	for {
		var status syscall.WaitStatus
		pid, err := syscall.Wait4(-1, &status, syscall.WNOHANG, nil)
		if pid <= 0 || err != nil {
			return
		}
	}
}
