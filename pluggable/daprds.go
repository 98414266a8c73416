package pluggable

import (
	"strconv"
	"sync"
	"time"

	"github.com/dapr-nats/jetstream-pubsub/jetstream"
)

// How often watchExit looks at a daprd process whose connections are all
// closed: often at first, as a daprd that stopped is about to exit, then
// rarely, as one whose connection went idle lives on.
const (
	exitPollFast = 50 * time.Millisecond
	exitPollSlow = 5 * time.Second
	exitFastFor  = 10 * time.Second
)

func (s *Server) connOpened(pid int) {
	s.mu.Lock()
	s.conns[pid]++
	s.mu.Unlock()
}

// connClosed starts watching a daprd process once its last connection has
// closed, to close its instances when it has exited. The connection alone
// does not tell: daprd's gRPC client also closes idle connections and dials
// again on the next call, without a new Init.
func (s *Server) connClosed(pid int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.conns[pid]--; s.conns[pid] > 0 {
		return
	}
	delete(s.conns, pid)
	s.watchIfDisconnectedLocked(pid)
}

// watchIfDisconnectedLocked starts watchExit for daprd process pid when it
// has instances, no open connection and no watcher yet. Both the close of a
// daprd's last connection and an Init that returns after it call it, under
// s.mu, so that an instance stored once its daprd is gone is watched too.
func (s *Server) watchIfDisconnectedLocked(pid int) {
	if pid == 0 || s.draining || s.conns[pid] > 0 || s.watching[pid] || !s.hasInstancesLocked(pid) {
		return
	}
	s.watching[pid] = true
	s.watchers.Add(1)
	go s.watchExit(pid)
}

// hasInstancesLocked reports whether daprd process pid has instances, or
// calls Components this process never initialised.
func (s *Server) hasInstancesLocked(pid int) bool {
	for k := range s.instances {
		if k.pid == pid {
			return true
		}
	}
	for k := range s.uninitialized {
		if k.pid == pid {
			return true
		}
	}
	return false
}

// watchExit closes the instances of daprd process pid once it has exited,
// and stops watching when the process connects again or the server shuts
// down.
func (s *Server) watchExit(pid int) {
	defer s.watchers.Done()
	start := time.Now()
	t := time.NewTimer(exitPollFast)
	defer t.Stop()
	for {
		select {
		case <-s.stop:
			return
		case <-t.C:
		}
		gone := processGone(pid)
		s.mu.Lock()
		if s.conns[pid] > 0 || s.draining || !s.hasInstancesLocked(pid) {
			delete(s.watching, pid)
			s.mu.Unlock()
			return
		}
		if gone {
			delete(s.watching, pid)
			instances := s.takeInstancesLocked(pid)
			m := s.metrics
			s.mu.Unlock()
			if m != nil {
				for k := range instances {
					m.Forget(k.name, strconv.Itoa(k.pid))
				}
			}
			s.closeInstances(instances)
			return
		}
		s.mu.Unlock()
		if time.Since(start) < exitFastFor {
			t.Reset(exitPollFast)
		} else {
			t.Reset(exitPollSlow)
		}
	}
}

func (s *Server) takeInstancesLocked(pid int) map[instanceKey]*jetstream.PubSub {
	out := map[instanceKey]*jetstream.PubSub{}
	for k, ps := range s.instances {
		if k.pid == pid {
			out[k] = ps
			delete(s.instances, k)
		}
	}
	for k := range s.uninitialized {
		if k.pid == pid {
			delete(s.uninitialized, k)
		}
	}
	return out
}

// closeInstances closes the instances of a daprd that exited. Their
// subscriptions ended with its connections; what its app had not
// acknowledged waits for the next subscription of the same consumer, as when
// a daprd restarts, which is why they retire rather than close.
func (s *Server) closeInstances(instances map[instanceKey]*jetstream.PubSub) {
	var wg sync.WaitGroup
	for k, ps := range instances {
		s.log.Infof("component %s: the daprd exited; closing its instance once what its subscriptions held has a new home", k)
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := ps.Retire(s.stop); err != nil {
				s.log.Warnf("component %s: closing: %v", k, err)
			}
		}()
	}
	wg.Wait()
}
