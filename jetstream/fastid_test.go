package jetstream

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
)

// slowID is msgID's content rule before the fast path.
func slowID(data []byte) string {
	var ce struct {
		ID          string `json:"id"`
		SpecVersion string `json:"specversion"`
	}
	if json.Unmarshal(data, &ce) == nil && ce.SpecVersion != "" && ce.ID != "" {
		return ce.ID
	}
	return ""
}

func TestFastCloudEventIDMatchesJSON(t *testing.T) {
	cases := []string{
		`{"specversion":"1.0","id":"a","data":{"x":[1,2,{"y":"}"}]}}`,
		`{"id":"a"}`, `{"specversion":"1.0"}`, `{"specversion":"1.0","ID":"b"}`, `{"SpecVersion":"1.0","Id":"b"}`,
		`{"specversion":"1.0","id":"a","id":"c"}`, `{"specversion":"1.0","id":1}`, `{"specversion":1,"id":"a"}`,
		`{"specversion":"1.0","id":"a\"b"}`, `{"specversion":"1.0","id":"a"`, ` {"specversion" : "1.0" , "id" : "x" } `,
		`{"data":"x\\\"}","specversion":"1.0","id":"q"}`, `{}`, `{"specversion":"","id":"a"}`,
		`{"specversion":"1.0","id":"ä"}`, `{"specversion":"1.0","id":null}`, `{"specversion":"1.0","id":"a","id":null}`,
		`{"a":true,"b":null,"c":-1.5e3,"d":[],"e":{},"specversion":"1.0","id":"z"}`,
		`{"specversion":"1.0","id":"a"} x`, `{"specversion":"1.0","i\u0064":"a"}`, `{"specversion":"1.0","id":"\u0061"}`,
	}
	for _, c := range cases {
		if got, want := msgID([]byte(c), nil), slowID([]byte(c)); got != want {
			t.Errorf("%s: fast path %q, encoding/json %q", c, got, want)
		}
	}
}

func BenchmarkMsgID(b *testing.B) {
	for _, size := range []int{128, 1024} {
		data := []byte(`{"specversion":"1.0","type":"bench","source":"bench","id":"abc-123","data":{"t":1234567890123456789,"p":"` + strings.Repeat("x", size-100) + `"}}`)
		b.Run("json", func(b *testing.B) {
			for b.Loop() {
				_ = slowID(data)
			}
		})
		b.Run("fast", func(b *testing.B) {
			for b.Loop() {
				_ = msgID(data, nil)
			}
		})
	}
}

// FuzzFastCloudEventID checks the fast path against json.Unmarshal on any input.
func FuzzFastCloudEventID(f *testing.F) {
	for _, s := range []string{`{"id":"a","specversion":"1.0"}`, `{"ID":"x","SpecVersion":"1"}`, ` {"a":[1,{"id":"n"}],"id":"b","specversion":"1"}`, `{"id":"\u00e9","specversion":"1"}`, `{}`, `{"id":1}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		if trimmed := bytes.TrimLeft(data, " \t\r\n"); len(trimmed) == 0 || trimmed[0] != '{' {
			return
		}
		id, ok := fastCloudEventID(data)
		if !ok {
			return
		}
		if want := slowID(data); id != want {
			t.Fatalf("fast %q, json.Unmarshal %q for %q", id, want, data)
		}
	})
}
