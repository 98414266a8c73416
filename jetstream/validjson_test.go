package jetstream

import (
	"encoding/json"
	"strings"
	"testing"
)

var jsonSeeds = []string{
	``, ` `, `{}`, `[]`, `{ }`, `[ ]`, `{"a":1}`, `{"a":1,}`, `[1,]`, `[,1]`, `{"a" 1}`, `{"a":}`, `{1:2}`,
	`"x"`, `"x`, `"\u00e9"`, `"\u00g9"`, `"\u00e"`, `"\x"`, `"\/\b\f\n\r\t\"\\"`, "\"a\x1fb\"", "\"\xff\xfe\"",
	`0`, `-0`, `01`, `-`, `1.`, `1.5`, `.5`, `1e5`, `1E+5`, `1e-5`, `1e`, `1e+`, `-1.5e3`, `2.e3`,
	`true`, `tru`, `truex`, `false`, `null`, `nul`, `[true,false,null]`, `{"a":[1,{"b":null}],"c":"d"}`,
	`{"a":1}x`, `{"a":1} `, " \t\r\n{}\n", `[1 2]`, `{"a":1 "b":2}`, `{"a":1}}`, `[[]]]`, `[[]`, `{"a":[}`,
	`{"specversion":"1.0","id":"a","data":{"x":[1,2,{"y":"}"}]}}`,
}

func TestValidJSONMatchesEncodingJSON(t *testing.T) {
	cases := jsonSeeds
	for _, depth := range []int{maxJSONDepth - 1, maxJSONDepth, maxJSONDepth + 1} {
		cases = append(cases,
			strings.Repeat("[", depth)+strings.Repeat("]", depth),
			strings.Repeat(`{"a":`, depth-1)+"{}"+strings.Repeat("}", depth-1),
			strings.Repeat("[", depth)+"1"+strings.Repeat("]", depth))
	}
	for _, c := range cases {
		if got, want := validJSON([]byte(c)), json.Valid([]byte(c)); got != want {
			t.Errorf("validJSON(%.40q) = %v, json.Valid %v", c, got, want)
		}
	}
}

// FuzzValidJSON checks validJSON against json.Valid on any input.
func FuzzValidJSON(f *testing.F) {
	for _, s := range jsonSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		if got, want := validJSON(data), json.Valid(data); got != want {
			t.Fatalf("validJSON = %v, json.Valid %v for %q", got, want, data)
		}
	})
}

func BenchmarkValidJSON(b *testing.B) {
	for _, size := range []int{128, 1024} {
		data := []byte(`{"specversion":"1.0","type":"bench","source":"bench","id":"abc-123","data":{"t":1234567890123456789,"p":"` + strings.Repeat("x", size-100) + `"}}`)
		b.Run("encoding/json", func(b *testing.B) {
			for b.Loop() {
				json.Valid(data)
			}
		})
		b.Run("validJSON", func(b *testing.B) {
			for b.Loop() {
				validJSON(data)
			}
		})
	}
}
