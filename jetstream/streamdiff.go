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
	want := s.wanted()
	if diffs := streamDifferences(have, want, s.cfg.Given); len(diffs) > 0 {
		s.log.Warnf("stream %q exists with settings other than the metadata asks for: %s; the component leaves existing streams as they are: %s",
			have.Name, strings.Join(diffs, ", "), differencesFix(have, want, s.cfg.Given))
	}
}

// differencesFix words what an operator can do about the differences of
// have from want: nats stream edit cannot change some of them, and a
// lowered limit edited in removes messages whether delivered or not.
func differencesFix(have, want natsjs.StreamConfig, given []string) string {
	fix := "change them with nats stream edit " + have.Name + ", or drop those keys"
	if fixed := unchangeable(have, want, given); fixed != "" {
		fix = fmt.Sprintf("JetStream cannot change the %s of a stream that exists, so to get it, stop publishing to it, let the consumers take what it holds, delete it (nats stream rm %s) and let the component create it again; change the others with nats stream edit %s, or drop those keys",
			fixed, have.Name, have.Name)
	}
	if lowered := lowered(have, want, given); len(lowered) > 0 {
		fix += fmt.Sprintf(". Lowering the %s of a stream removes at once the messages over the new limit, those not yet delivered to every consumer included: let the consumers catch up first",
			strings.Join(lowered, ", "))
	}
	return fix
}

// unchangeable names the settings given that differ and that JetStream
// refuses to update: the storage, and a retention to or from workqueue.
func unchangeable(have, want natsjs.StreamConfig, given []string) string {
	var names []string
	if slices.Contains(given, "streamStorage") && have.Storage != want.Storage {
		names = append(names, "storage")
	}
	if slices.Contains(given, "streamRetention") && have.Retention != want.Retention &&
		(have.Retention == natsjs.WorkQueuePolicy || want.Retention == natsjs.WorkQueuePolicy) {
		names = append(names, "retention to or from workqueue")
	}
	return strings.Join(names, " or the ")
}

// lowered names the limits given that are tighter than the stream's: the
// ones whose edit drops stored messages.
func lowered(have, want natsjs.StreamConfig, given []string) []string {
	var names []string
	tighter := func(key, what string, h, w int64) {
		// 0 or less is no limit.
		if slices.Contains(given, key) && w > 0 && (h <= 0 || w < h) {
			names = append(names, what)
		}
	}
	tighter("streamMaxAge", "max age", int64(have.MaxAge), int64(want.MaxAge))
	tighter("streamMaxMsgs", "max messages", have.MaxMsgs, want.MaxMsgs)
	tighter("streamMaxBytes", "max bytes", have.MaxBytes, want.MaxBytes)
	tighter("streamMaxMsgsPerSubject", "max messages per subject", have.MaxMsgsPerSubject, want.MaxMsgsPerSubject)
	return names
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
