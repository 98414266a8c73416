package jetstream

import (
	"fmt"
	"slices"
	"strings"

	natsjs "github.com/nats-io/nats.go/jetstream"
)

// noteDifferences logs, once per stream, where an existing stream differs
// from the stream* settings the metadata gave. The component leaves existing
// streams as they are: they may be an operator's, and JetStream cannot
// change some settings (retention, storage) of a stream that exists.
func (s *streams) noteDifferences(have natsjs.StreamConfig) {
	s.mu.Lock()
	noted := s.noted[have.Name]
	s.noted[have.Name] = true
	s.mu.Unlock()
	if noted || s.log == nil {
		return
	}
	if diffs := streamDifferences(have, s.wanted(), s.cfg.Given); len(diffs) > 0 {
		s.log.Warnf("stream %q exists with settings other than the metadata asks for: %s; the component leaves existing streams as they are: change them with nats stream edit where JetStream allows it, or drop those keys",
			have.Name, strings.Join(diffs, ", "))
	}
}

// wanted is the configuration a stream created now would get, apart from
// its name and the topic among its subjects.
func (s *streams) wanted() natsjs.StreamConfig {
	return natsjs.StreamConfig{
		Subjects: s.cfg.Subjects,
		Storage:  s.cfg.Storage, Replicas: s.cfg.Replicas, MaxAge: s.cfg.MaxAge, MaxMsgs: s.cfg.MaxMsgs,
		MaxBytes: s.cfg.MaxBytes, Duplicates: s.cfg.DuplicateWindow, Retention: s.cfg.Retention,
		Discard: s.cfg.Discard, MaxMsgSize: s.cfg.MaxMsgSize, MaxMsgsPerSubject: s.cfg.MaxMsgsPerSubject,
		Compression: s.cfg.Compression, Placement: s.cfg.Placement,
	}
}

// streamDifferences describes each setting of have that differs from want,
// among the keys given: "retention limits where streamRetention asks for
// workqueue".
func streamDifferences(have, want natsjs.StreamConfig, given []string) []string {
	var diffs []string
	differ := func(key, what string, haveV, wantV any) {
		h, w := settingText(haveV), settingText(wantV)
		if slices.Contains(given, key) && h != w {
			diffs = append(diffs, fmt.Sprintf("%s %s where %s asks for %s", what, h, key, w))
		}
	}
	// The stream may hold more subjects (topics added to it), but must take
	// every one that streamSubjects names.
	if slices.Contains(given, "streamSubjects") && slices.ContainsFunc(want.Subjects, func(subj string) bool { return !covers(have.Subjects, subj) }) {
		diffs = append(diffs, fmt.Sprintf("subjects %v where streamSubjects asks for %v", have.Subjects, want.Subjects))
	}
	differ("streamStorage", "storage", have.Storage, want.Storage)
	differ("streamReplicas", "replicas", have.Replicas, want.Replicas)
	differ("streamMaxAge", "max age", have.MaxAge, want.MaxAge)
	differ("streamMaxMsgs", "max messages", have.MaxMsgs, want.MaxMsgs)
	differ("streamMaxBytes", "max bytes", have.MaxBytes, want.MaxBytes)
	differ("streamDuplicateWindow", "duplicate window", have.Duplicates, want.Duplicates)
	differ("streamRetention", "retention", have.Retention, want.Retention)
	differ("streamDiscard", "discard", have.Discard, want.Discard)
	differ("streamMaxMsgSize", "max message size", have.MaxMsgSize, want.MaxMsgSize)
	differ("streamMaxMsgsPerSubject", "max messages per subject", have.MaxMsgsPerSubject, want.MaxMsgsPerSubject)
	differ("streamCompression", "compression", have.Compression, want.Compression)
	differ("streamPlacementCluster", "placement cluster", placementCluster(have.Placement), placementCluster(want.Placement))
	differ("streamPlacementTags", "placement tags", placementTags(have.Placement), placementTags(want.Placement))
	return diffs
}

// settingText is a setting as the metadata spells it: workqueue, new, s2.
func settingText(v any) string {
	t := strings.ToLower(fmt.Sprint(v))
	return strings.TrimPrefix(t, "discard")
}

func placementCluster(p *natsjs.Placement) string {
	if p == nil {
		return ""
	}
	return p.Cluster
}

func placementTags(p *natsjs.Placement) []string {
	if p == nil {
		return nil
	}
	return p.Tags
}
