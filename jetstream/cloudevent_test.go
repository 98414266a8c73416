package jetstream

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
)

// slowCloudEvent is readCloudEvent's rule without the fast path.
func slowCloudEvent(data []byte) (cloudEvent, bool) {
	var ce cloudEvent
	if json.Unmarshal(data, &ce) != nil || ce.SpecVersion == "" {
		return cloudEvent{}, false
	}
	return ce, true
}

func TestFastCloudEventMatchesJSON(t *testing.T) {
	cases := []string{
		`{"specversion":"1.0","id":"a","data":{"x":[1,2,{"y":"}"}]}}`,
		`{"id":"a"}`, `{"specversion":"1.0"}`, `{"specversion":"1.0","ID":"b"}`, `{"SpecVersion":"1.0","Id":"b"}`,
		`{"specversion":"1.0","id":"a","id":"c"}`, `{"specversion":"1.0","id":1}`, `{"specversion":1,"id":"a"}`,
		`{"specversion":"1.0","id":"a\"b"}`, `{"specversion":"1.0","id":"a"`, ` {"specversion" : "1.0" , "id" : "x" } `,
		`{"data":"x\\\"}","specversion":"1.0","id":"q"}`, `{}`, `{"specversion":"","id":"a"}`,
		`{"specversion":"1.0","id":"ä"}`, `{"specversion":"1.0","id":null}`, `{"specversion":"1.0","id":"a","id":null}`,
		`{"a":true,"b":null,"c":-1.5e3,"d":[],"e":{},"specversion":"1.0","id":"z"}`,
		`{"specversion":"1.0","id":"a"} x`, `{"specversion":"1.0","i\u0064":"a"}`, `{"specversion":"1.0","id":"\u0061"}`,
		`{"specversion":"1.0","id":"t","traceparent":"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01","tracestate":"k=v"}`,
		`{"specversion":"1.0","id":"t","TraceParent":"p1","traceparent":"p2"}`, `{"specversion":"1.0","traceparent":7}`,
		`{"traceparent":"p","tracestate":"s"}`,
	}
	for _, c := range cases {
		got, gotOK := readCloudEvent([]byte(c))
		want, wantOK := slowCloudEvent([]byte(c))
		if got != want || gotOK != wantOK {
			t.Errorf("%s: fast path %+v %v, encoding/json %+v %v", c, got, gotOK, want, wantOK)
		}
	}
}

func BenchmarkReadCloudEvent(b *testing.B) {
	for _, size := range []int{128, 1024} {
		data := []byte(`{"specversion":"1.0","type":"bench","source":"bench","id":"abc-123","data":{"t":1234567890123456789,"p":"` + strings.Repeat("x", size-100) + `"}}`)
		b.Run("json", func(b *testing.B) {
			for b.Loop() {
				_, _ = slowCloudEvent(data)
			}
		})
		b.Run("fast", func(b *testing.B) {
			for b.Loop() {
				_, _ = readCloudEvent(data)
			}
		})
	}
}

// FuzzFastCloudEvent checks the fast path against json.Unmarshal on any input.
func FuzzFastCloudEvent(f *testing.F) {
	for _, s := range []string{
		`{"id":"a","specversion":"1.0"}`, `{"ID":"x","SpecVersion":"1"}`, ` {"a":[1,{"id":"n"}],"id":"b","specversion":"1"}`,
		`{"id":"\u00e9","specversion":"1"}`, `{}`, `{"id":1}`, `{"specversion":"1","traceparent":"p","TraceState":"s"}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		if trimmed := bytes.TrimLeft(data, " \t\r\n"); len(trimmed) == 0 || trimmed[0] != '{' {
			return
		}
		got, gotOK := readCloudEvent(data)
		want, wantOK := slowCloudEvent(data)
		if got != want || gotOK != wantOK {
			t.Fatalf("fast %+v %v, json.Unmarshal %+v %v for %q", got, gotOK, want, wantOK, data)
		}
	})
}
