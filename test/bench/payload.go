package main

import (
	"bytes"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// cloudEvent returns a minimal CloudEvent JSON of exactly size bytes (more if
// size is too small for the envelope) with the given id and send time:
//
//	{"specversion":"1.0","type":"bench","source":"bench","id":"<id>","data":{"t":<unix nanos>,"p":"<padding>"}}
//
// The component reads the id into Nats-Msg-Id, as it does for every event
// daprd publishes; the raw baselines set the same header.
func cloudEvent(id string, sent time.Time, size int) []byte {
	head := `{"specversion":"1.0","type":"bench","source":"bench","id":"` + id + `","data":{"t":` +
		fmt.Sprintf("%019d", sent.UnixNano()) + `,"p":"`
	tail := `"}}`
	pad := max(size-len(head)-len(tail), 0)
	b := make([]byte, 0, len(head)+pad+len(tail))
	b = append(b, head...)
	b = append(b, strings.Repeat("x", pad)...)
	b = append(b, tail...)
	return b
}

var tKey = []byte(`"t":`)

// sentAt reads the send time from a payload made by cloudEvent, or by daprd
// wrapping {"t":...} into a CloudEvent.
func sentAt(b []byte) (time.Time, bool) {
	i := bytes.Index(b, tKey)
	if i < 0 {
		return time.Time{}, false
	}
	b = b[i+len(tKey):]
	j := 0
	for j < len(b) && b[j] >= '0' && b[j] <= '9' {
		j++
	}
	n, err := strconv.ParseInt(string(b[:j]), 10, 64)
	if err != nil {
		return time.Time{}, false
	}
	return time.Unix(0, n), true
}

// payloads pre-builds n events with distinct ids (so that JetStream
// de-duplication never drops one) for one measurement.
func payloads(prefix string, n, size int) (ids []string, data [][]byte) {
	ids = make([]string, n)
	data = make([][]byte, n)
	now := time.Now()
	for i := range n {
		ids[i] = prefix + "-" + strconv.FormatInt(int64(i), 36)
		data[i] = cloudEvent(ids[i], now, size)
	}
	return ids, data
}
