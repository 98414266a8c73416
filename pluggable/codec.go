package pluggable

import (
	"errors"
	"strings"
	"unicode/utf8"

	proto "github.com/dapr/dapr/pkg/proto/components/v1"
	"google.golang.org/grpc/encoding"
	_ "google.golang.org/grpc/encoding/proto" // registers the codec this one falls back to
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
)

// codec is gRPC's "proto" codec with hand-written encoding for the messages
// on the hot path: PullMessagesResponse out, and PublishRequest,
// BulkPublishRequest and PullMessagesRequest in. protobuf's generic map
// encoding works through reflection and was the largest single cost of a
// delivered message. Every other message goes to gRPC's own proto codec.
//
// The decoders accept exactly what proto.Unmarshal accepts and yield the same
// known fields (a fuzz test holds them to that); unknown fields are skipped.
// The encoder replaces invalid UTF-8 in strings, which a NATS header or
// subject may carry, with U+FFFD: protobuf refuses to encode or decode such
// a string, and daprd's client ends the subscription when a message cannot
// be decoded.
type codec struct{ fallback encoding.CodecV2 }

func newCodec() *codec { return &codec{fallback: encoding.GetCodecV2("proto")} }

func (*codec) Name() string { return "proto" }

func (c *codec) Marshal(v any) (mem.BufferSlice, error) {
	m, ok := v.(*proto.PullMessagesResponse)
	if !ok {
		return c.fallback.Marshal(v)
	}
	size := sizePullResponse(m)
	if mem.IsBelowBufferPoolingThreshold(size) {
		return mem.BufferSlice{mem.SliceBuffer(appendPullResponse(make([]byte, 0, size), m))}, nil
	}
	pool := mem.DefaultBufferPool()
	buf := pool.Get(size)
	*buf = appendPullResponse((*buf)[:0], m)
	return mem.BufferSlice{mem.NewBuffer(buf, pool)}, nil
}

func (c *codec) Unmarshal(data mem.BufferSlice, v any) error {
	var decode func([]byte) error
	switch m := v.(type) {
	case *proto.PublishRequest:
		decode = func(b []byte) error { m.Reset(); return decodePublish(b, m) }
	case *proto.BulkPublishRequest:
		decode = func(b []byte) error { m.Reset(); return decodeBulkPublish(b, m) }
	case *proto.PullMessagesRequest:
		decode = func(b []byte) error { m.Reset(); return decodePullRequest(b, m) }
	default:
		return c.fallback.Unmarshal(data, v)
	}
	if len(data) == 1 {
		return decode(data[0].ReadOnlyData())
	}
	buf := data.MaterializeToBuffer(mem.DefaultBufferPool())
	defer buf.Free()
	return decode(buf.ReadOnlyData())
}

// Encoding.

func validString(s string) string {
	if utf8.ValidString(s) {
		return s
	}
	return strings.ToValidUTF8(s, "\uFFFD")
}

func sizeString(num protowire.Number, s string) int {
	if s == "" {
		return 0
	}
	return protowire.SizeTag(num) + protowire.SizeBytes(len(validString(s)))
}

func appendString(b []byte, num protowire.Number, s string) []byte {
	if s == "" {
		return b
	}
	b = protowire.AppendTag(b, num, protowire.BytesType)
	return protowire.AppendString(b, validString(s))
}

// sizeEntry is the size of a map entry of valid strings k and v.
func sizeEntry(k, v string) int {
	return 1 + protowire.SizeBytes(len(k)) + 1 + protowire.SizeBytes(len(v))
}

func sizeMap(num protowire.Number, m map[string]string) int {
	n := 0
	for k, v := range m {
		n += protowire.SizeTag(num) + protowire.SizeBytes(sizeEntry(validString(k), validString(v)))
	}
	return n
}

func appendMap(b []byte, num protowire.Number, m map[string]string) []byte {
	for k, v := range m {
		k, v = validString(k), validString(v)
		b = protowire.AppendTag(b, num, protowire.BytesType)
		b = protowire.AppendVarint(b, uint64(sizeEntry(k, v)))
		b = protowire.AppendTag(b, 1, protowire.BytesType)
		b = protowire.AppendString(b, k)
		b = protowire.AppendTag(b, 2, protowire.BytesType)
		b = protowire.AppendString(b, v)
	}
	return b
}

func sizePullResponse(m *proto.PullMessagesResponse) int {
	n := 0
	if len(m.Data) > 0 {
		n += 1 + protowire.SizeBytes(len(m.Data))
	}
	return n + sizeString(2, m.TopicName) + sizeMap(3, m.Metadata) + sizeString(4, m.ContentType) + sizeString(5, m.Id)
}

func appendPullResponse(b []byte, m *proto.PullMessagesResponse) []byte {
	if len(m.Data) > 0 {
		b = protowire.AppendTag(b, 1, protowire.BytesType)
		b = protowire.AppendBytes(b, m.Data)
	}
	b = appendString(b, 2, m.TopicName)
	b = appendMap(b, 3, m.Metadata)
	b = appendString(b, 4, m.ContentType)
	return appendString(b, 5, m.Id)
}

// Decoding.

var (
	errDecode   = errors.New("proto: cannot parse invalid wire-format data")
	errInvalidS = errors.New("proto: string field contains invalid UTF-8")
)

// eachField calls f with every length-delimited field of b. Fields of other
// wire types are skipped: no field of these messages has one, and
// proto.Unmarshal treats a known field with the wrong wire type as unknown.
func eachField(b []byte, f func(num protowire.Number, v []byte) error) error {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 || num > protowire.MaxValidNumber {
			return errDecode
		}
		b = b[n:]
		if typ != protowire.BytesType {
			if n = protowire.ConsumeFieldValue(num, typ, b); n < 0 {
				return errDecode
			}
			b = b[n:]
			continue
		}
		v, n := protowire.ConsumeBytes(b)
		if n < 0 {
			return errDecode
		}
		b = b[n:]
		if err := f(num, v); err != nil {
			return err
		}
	}
	return nil
}

func str(v []byte) (string, error) {
	if !utf8.Valid(v) {
		return "", errInvalidS
	}
	return string(v), nil
}

func setString(dst *string, v []byte) error {
	s, err := str(v)
	*dst = s
	return err
}

func setBytes(dst *[]byte, v []byte) error {
	*dst = append([]byte(nil), v...)
	return nil
}

// mapEntry decodes one map<string,string> entry into *m.
func mapEntry(m *map[string]string, v []byte) error {
	var key, val string
	err := eachField(v, func(num protowire.Number, v []byte) error {
		switch num {
		case 1:
			return setString(&key, v)
		case 2:
			return setString(&val, v)
		}
		return nil
	})
	if err != nil {
		return err
	}
	if *m == nil {
		*m = map[string]string{}
	}
	(*m)[key] = val
	return nil
}

func decodePublish(b []byte, m *proto.PublishRequest) error {
	return eachField(b, func(num protowire.Number, v []byte) error {
		switch num {
		case 1:
			return setBytes(&m.Data, v)
		case 2:
			return setString(&m.PubsubName, v)
		case 3:
			return setString(&m.Topic, v)
		case 4:
			return mapEntry(&m.Metadata, v)
		case 5:
			return setString(&m.ContentType, v)
		}
		return nil
	})
}

func decodeBulkPublish(b []byte, m *proto.BulkPublishRequest) error {
	return eachField(b, func(num protowire.Number, v []byte) error {
		switch num {
		case 1:
			e := &proto.BulkMessageEntry{}
			m.Entries = append(m.Entries, e)
			return decodeBulkEntry(v, e)
		case 2:
			return setString(&m.PubsubName, v)
		case 3:
			return setString(&m.Topic, v)
		case 4:
			return mapEntry(&m.Metadata, v)
		}
		return nil
	})
}

func decodeBulkEntry(b []byte, e *proto.BulkMessageEntry) error {
	return eachField(b, func(num protowire.Number, v []byte) error {
		switch num {
		case 1:
			return setString(&e.EntryId, v)
		case 2:
			return setBytes(&e.Event, v)
		case 3:
			return setString(&e.ContentType, v)
		case 4:
			return mapEntry(&e.Metadata, v)
		}
		return nil
	})
}

func decodePullRequest(b []byte, m *proto.PullMessagesRequest) error {
	return eachField(b, func(num protowire.Number, v []byte) error {
		switch num {
		case 1:
			// A message field that occurs twice is merged.
			if m.Topic == nil {
				m.Topic = &proto.Topic{}
			}
			return eachField(v, func(num protowire.Number, v []byte) error {
				switch num {
				case 1:
					return setString(&m.Topic.Name, v)
				case 2:
					return mapEntry(&m.Topic.Metadata, v)
				}
				return nil
			})
		case 2:
			return setString(&m.AckMessageId, v)
		case 3:
			if m.AckError == nil {
				m.AckError = &proto.AckMessageError{}
			}
			return eachField(v, func(num protowire.Number, v []byte) error {
				if num == 1 {
					return setString(&m.AckError.Message, v)
				}
				return nil
			})
		}
		return nil
	})
}
