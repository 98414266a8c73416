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

func (s *Server) connOpened(a peerAddr) {
	s.mu.Lock()
	s.conns[a.pid]++
	s.open[a.conn] = true
	s.mu.Unlock()
}

// connClosed parks the instances initialised on the connection, and starts
// watching a daprd process once its last connection has closed, to close
// its instances when it has exited.
//
// daprd dials a connection of its own for each Component it initialises
// (pkg/components/pubsub/pluggable.go, Init calls Dial), and closes it when it
// closes the Component (pluggable.GRPCConnector.Close: cancel, then
// conn.Close). The pluggable protocol has no Close call, so that closed
// connection is the only sign a component gets when a hot reload removes,
// renames or edits a Component (pkg/runtime/hotreload/reconciler/components.go
// calls processor.Close, then Init for an edited one). The connection alone
// does not tell it apart from a connection gone idle, though: daprd's gRPC
// client closes a connection after 30 idle minutes and dials again on the
// next call, without a new Init. So the instance is parked: closed, with its
// Init metadata kept, and initialised again by the next call that names it
// (see revive).
func (s *Server) connClosed(a peerAddr) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.open, a.conn)
	for key, b := range s.bindings {
		if b.conn == a.conn {
			s.parkLocked(key)
		}
	}
	if s.conns[a.pid]--; s.conns[a.pid] > 0 {
		return
	}
	delete(s.conns, a.pid)
	s.watchIfDisconnectedLocked(a.pid)
}

// parkedInstance is a Component instance closed because the connection it
// was initialised on closed (see connClosed), with what initialising it again
// needs.
type parkedInstance struct {
	props map[string]string
	// prev is the instance closed, whose counters the next one continues.
	prev *jetstream.PubSub
	once sync.Once
	ps   *jetstream.PubSub
	err  error
}

// parkLocked closes the instance key, initialised on a connection that
// closed, and keeps what a later call needs to initialise it again. Its
// subscriptions ended with the connection; what they held waits for the
// next subscription of their consumers, as when a daprd exits (see
// closeInstances). At shutdown, Shutdown closes the instances instead.
func (s *Server) parkLocked(key instanceKey) {
	b := s.bindings[key]
	delete(s.bindings, key)
	if s.draining {
		return
	}
	ps := s.instances[key]
	delete(s.instances, key)
	s.parked[key] = &parkedInstance{props: b.props, prev: ps}
	if ps == nil {
		return
	}
	s.log.Infof("component %s: daprd closed the connection of this Component (a hot reload removed, renamed or edited it, or the connection was idle); closing its instance, and keeping its metadata for a later call without Init", key)
	s.watchers.Add(1)
	go func() {
		defer s.watchers.Done()
		if err := ps.Retire(s.stop); err != nil {
			s.log.Warnf("component %s: closing: %v", key, err)
		}
	}()
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
	for k := range s.parked {
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
			parked := s.takeParkedLocked(pid)
			m := s.metrics
			s.mu.Unlock()
			if m != nil {
				for k := range instances {
					m.Forget(k.name, strconv.Itoa(k.pid))
				}
				for _, k := range parked {
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
			delete(s.bindings, k)
		}
	}
	for k := range s.uninitialized {
		if k.pid == pid {
			delete(s.uninitialized, k)
		}
	}
	return out
}

// takeParkedLocked forgets the parked instances of daprd process pid, which
// exited, and returns their keys. They are closed already.
func (s *Server) takeParkedLocked(pid int) []instanceKey {
	var out []instanceKey
	for k := range s.parked {
		if k.pid == pid {
			out = append(out, k)
			delete(s.parked, k)
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
