package jetstream

import (
	"bytes"
	"encoding/json"
	"strings"
)

// cloudEvent holds what publishing reads from a CloudEvent payload: the id
// for de-duplication, and the W3C trace context, which becomes NATS headers
// so that native NATS consumers and tracers continue the trace.
type cloudEvent struct {
	ID          string `json:"id"`
	SpecVersion string `json:"specversion"`
	TraceParent string `json:"traceparent"`
	TraceState  string `json:"tracestate"`
}

// readCloudEvent returns the fields of a CloudEvent payload, as
// json.Unmarshal finds them; ok is false for a payload that is not a
// CloudEvent (not a JSON object, or without specversion).
func readCloudEvent(data []byte) (ce cloudEvent, ok bool) {
	if trimmed := bytes.TrimLeft(data, " \t\r\n"); len(trimmed) == 0 || trimmed[0] != '{' {
		return cloudEvent{}, false
	}
	ce, fast := fastCloudEvent(data)
	if !fast && json.Unmarshal(data, &ce) != nil {
		return cloudEvent{}, false
	}
	if ce.SpecVersion == "" {
		return cloudEvent{}, false
	}
	return ce, true
}

// msgID picks the de-duplication id: msgId metadata, else the id of a
// CloudEvent payload, else Dapr's cloudevent.id metadata. Payloads that are
// not valid CloudEvent JSON get no id from their content. The keys are read
// in any case, as every other publish key is: a key that is reserved, and so
// kept out of the headers, must not be dropped without a word.
func msgID(ce cloudEvent, isCE bool, md map[string]string) string {
	if id := metadataFold(md, MetadataMsgID); id != "" {
		return id
	}
	if isCE && ce.ID != "" {
		return ce.ID
	}
	return metadataFold(md, MetadataCloudEventID)
}

// metadataFold returns the value of key in md, in any case; the exact key
// first, since it is the usual one.
func metadataFold(md map[string]string, key string) string {
	if v, ok := md[key]; ok {
		return v
	}
	v, _ := lookupFold(md, key)
	return v
}

// fastCloudEvent returns what json.Unmarshal would find, without decoding
// the payload: the document must be valid JSON (validJSON), then only the
// top-level keys are scanned; the fields of cloudEvent are matched as
// encoding/json does (case-insensitively, the last one wins). Anything
// unusual (escapes, non-ASCII or non-string values in those fields) returns
// ok == false, and the caller falls back to json.Unmarshal. Invalid JSON
// returns an empty cloudEvent and ok == true: json.Unmarshal would fail.
func fastCloudEvent(data []byte) (ce cloudEvent, ok bool) {
	if !validJSON(data) {
		return cloudEvent{}, true
	}
	i := skipWS(data, 0)
	if i >= len(data) || data[i] != '{' {
		return cloudEvent{}, false
	}
	i++
	for {
		i = skipWS(data, i)
		if data[i] == '}' {
			break
		}
		key, j, ok := plainString(data, i)
		if !ok {
			return cloudEvent{}, false
		}
		i = skipWS(data, j)
		i = skipWS(data, i+1) // ':'
		if field := ce.field(string(key)); field != nil {
			v, j, ok := plainString(data, i)
			if !ok {
				return cloudEvent{}, false
			}
			*field = string(v)
			i = j
		} else {
			i = skipValue(data, i)
		}
		i = skipWS(data, i)
		if data[i] == ',' {
			i++
		}
	}
	return ce, true
}

// field returns the field of ce that JSON key names, or nil.
func (ce *cloudEvent) field(key string) *string {
	switch {
	case strings.EqualFold(key, "id"):
		return &ce.ID
	case strings.EqualFold(key, "specversion"):
		return &ce.SpecVersion
	case strings.EqualFold(key, "traceparent"):
		return &ce.TraceParent
	case strings.EqualFold(key, "tracestate"):
		return &ce.TraceState
	}
	return nil
}

func skipWS(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\r' || b[i] == '\n') {
		i++
	}
	return i
}

// plainString reads a JSON string at b[i] with no escapes and only ASCII.
func plainString(b []byte, i int) ([]byte, int, bool) {
	if b[i] != '"' {
		return nil, i, false
	}
	for j := i + 1; j < len(b); j++ {
		switch c := b[j]; {
		case c == '"':
			return b[i+1 : j], j + 1, true
		case c == '\\' || c >= 0x80:
			return nil, i, false
		}
	}
	return nil, i, false
}

// skipValue skips one value of a document already known to be valid.
func skipValue(b []byte, i int) int {
	depth := 0
	for ; i < len(b); i++ {
		switch b[i] {
		case '"':
			i = stringEnd(b, i)
			if depth == 0 {
				return i + 1
			}
		case '{', '[':
			depth++
		case '}', ']':
			if depth == 0 {
				return i
			}
			depth--
			if depth == 0 {
				return i + 1
			}
		case ',':
			if depth == 0 {
				return i
			}
		}
	}
	return i
}

// stringEnd returns where the quote that ends the string at b[i] of a valid
// document is: the next one after an even number of backslashes.
func stringEnd(b []byte, i int) int {
	for {
		i += 1 + bytes.IndexByte(b[i+1:], '"')
		k := i - 1
		for b[k] == '\\' {
			k--
		}
		if (i-1-k)%2 == 0 {
			return i
		}
	}
}
