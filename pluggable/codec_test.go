package pluggable

import (
	"strings"
	"testing"
	"unicode/utf8"

	proto "github.com/dapr/dapr/pkg/proto/components/v1"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
	gproto "google.golang.org/protobuf/proto"
)

// decodeKinds are the messages the codec decodes itself, by fuzz selector.
var decodeKinds = []func() gproto.Message{
	func() gproto.Message { return &proto.PublishRequest{} },
	func() gproto.Message { return &proto.BulkPublishRequest{} },
	func() gproto.Message { return &proto.PullMessagesRequest{} },
}

func decodeSeeds(t testing.TB) [][]byte {
	md := map[string]string{"traceparent": "00-1", "": "empty key", "k": ""}
	msgs := []gproto.Message{
		&proto.PublishRequest{Data: []byte(`{"id":"1"}`), PubsubName: "pubsub", Topic: "orders", Metadata: md, ContentType: "application/json"},
		&proto.PublishRequest{},
		&proto.BulkPublishRequest{PubsubName: "p", Topic: "t", Metadata: md, Entries: []*proto.BulkMessageEntry{
			{EntryId: "1", Event: []byte("x"), ContentType: "text/plain", Metadata: md}, {}, {EntryId: "3"},
		}},
		&proto.PullMessagesRequest{Topic: &proto.Topic{Name: "orders", Metadata: md}},
		&proto.PullMessagesRequest{AckMessageId: "1a", AckError: &proto.AckMessageError{Message: "boom"}},
		&proto.PullMessagesRequest{AckError: &proto.AckMessageError{}},
	}
	var out [][]byte
	for _, m := range msgs {
		b, err := gproto.Marshal(m)
		require.NoError(t, err)
		out = append(out, b)
	}
	tag := func(b []byte, num protowire.Number, typ protowire.Type) []byte {
		return protowire.AppendTag(b, num, typ)
	}
	str := func(b []byte, num protowire.Number, s string) []byte {
		return protowire.AppendString(tag(b, num, protowire.BytesType), s)
	}
	// Known fields with other wire types, unknown fields of every type, a
	// group, duplicates, invalid UTF-8, a truncated length, field number 0.
	odd := protowire.AppendVarint(tag(nil, 2, protowire.VarintType), 7)
	odd = protowire.AppendFixed32(tag(odd, 3, protowire.Fixed32Type), 1)
	odd = protowire.AppendFixed64(tag(odd, 99, protowire.Fixed64Type), 1)
	odd = tag(tag(odd, 100, protowire.StartGroupType), 100, protowire.EndGroupType)
	odd = str(str(odd, 2, "first"), 2, "second")
	odd = str(odd, 1000, "unknown")
	out = append(out, odd,
		str(nil, 2, "\xff"),
		str(nil, 4, string(str(str(nil, 1, "k"), 2, "\xfe"))),
		str(nil, 4, string(str(str(protowire.AppendVarint(tag(nil, 1, protowire.VarintType), 3), 1, "k"), 3, "x"))),
		str(str(nil, 1, string(str(nil, 1, "a"))), 1, string(str(nil, 2, string(str(nil, 1, "k"))))),
		str(str(nil, 3, string(str(nil, 1, "a"))), 3, ""),
		[]byte{0x12, 0x05, 'a'},
		[]byte{0x02, 0x00},
		tag(nil, 100, protowire.EndGroupType),
		tag(nil, 100, protowire.StartGroupType),
		protowire.AppendVarint(nil, uint64(protowire.MaxValidNumber+1)<<3|2),
	)
	return out
}

// FuzzDecodeMatchesProto holds the hand-written decoders to proto.Unmarshal:
// the same inputs fail, and the others give the same known fields.
func FuzzDecodeMatchesProto(f *testing.F) {
	for _, b := range decodeSeeds(f) {
		for k := range decodeKinds {
			f.Add(uint8(k), b)
		}
	}
	c := newCodec()
	f.Fuzz(func(t *testing.T, kind uint8, b []byte) {
		newMsg := decodeKinds[int(kind)%len(decodeKinds)]
		want, got := newMsg(), newMsg()
		wantErr := gproto.UnmarshalOptions{DiscardUnknown: true}.Unmarshal(b, want)
		gotErr := c.Unmarshal(mem.BufferSlice{mem.SliceBuffer(b)}, got)
		if (wantErr == nil) != (gotErr == nil) {
			t.Fatalf("%T from %x: proto.Unmarshal says %v, the codec says %v", want, b, wantErr, gotErr)
		}
		if wantErr == nil && !gproto.Equal(want, got) {
			t.Fatalf("%T from %x:\nproto: %v\ncodec: %v", want, b, want, got)
		}
	})
}

func TestDecodeSeedsAndSplitBuffers(t *testing.T) {
	c := newCodec()
	for _, b := range decodeSeeds(t) {
		for _, newMsg := range decodeKinds {
			want, got := newMsg(), newMsg()
			wantErr := gproto.UnmarshalOptions{DiscardUnknown: true}.Unmarshal(b, want)
			// The frame arrives in pieces, and got holds an earlier message.
			prev, err := gproto.Marshal(filled(got))
			require.NoError(t, err)
			require.NoError(t, c.Unmarshal(mem.BufferSlice{mem.SliceBuffer(prev)}, got))
			var split mem.BufferSlice
			for i := 0; i < len(b); i += 3 {
				split = append(split, mem.SliceBuffer(b[i:min(i+3, len(b))]))
			}
			gotErr := c.Unmarshal(split, got)
			require.Equal(t, wantErr == nil, gotErr == nil, "%T from %x: %v / %v", want, b, wantErr, gotErr)
			if wantErr == nil {
				require.True(t, gproto.Equal(want, got), "%T from %x:\nproto: %v\ncodec: %v", want, b, want, got)
			}
		}
	}
}

// filled returns a message of m's type with every field set.
func filled(m gproto.Message) gproto.Message {
	md := map[string]string{"old": "value"}
	switch m.(type) {
	case *proto.PublishRequest:
		return &proto.PublishRequest{Data: []byte("old"), PubsubName: "old", Topic: "old", Metadata: md, ContentType: "old"}
	case *proto.BulkPublishRequest:
		return &proto.BulkPublishRequest{PubsubName: "old", Topic: "old", Metadata: md, Entries: []*proto.BulkMessageEntry{{EntryId: "old"}}}
	default:
		return &proto.PullMessagesRequest{Topic: &proto.Topic{Name: "old", Metadata: md}, AckMessageId: "old", AckError: &proto.AckMessageError{Message: "old"}}
	}
}

// FuzzEncodeMatchesProto checks that what the codec writes decodes with
// proto.Unmarshal to the message it was given, with invalid UTF-8 replaced.
func FuzzEncodeMatchesProto(f *testing.F) {
	f.Add([]byte(`{"id":"1"}`), "orders", "application/json", "1a", "Topic\x00orders\x00jetstream-sequence\x0012\x00")
	f.Add([]byte{}, "", "", "", "")
	f.Add([]byte{0xff}, "a\xffb", "\xc3", "id", "k\xfe\x00v\x00\x00\x00")
	f.Add([]byte(strings.Repeat("x", 5000)), "big", "", "1", strings.Repeat("key\x00value\x00", 20))
	c := newCodec()
	f.Fuzz(func(t *testing.T, data []byte, topic, contentType, id, pairs string) {
		in := &proto.PullMessagesResponse{Data: data, TopicName: topic, ContentType: contentType, Id: id}
		kv := strings.Split(pairs, "\x00")
		for i := 0; i+1 < len(kv); i += 2 {
			if in.Metadata == nil {
				in.Metadata = map[string]string{}
			}
			in.Metadata[kv[i]] = kv[i+1]
		}
		want := &proto.PullMessagesResponse{
			Data: data, TopicName: strings.ToValidUTF8(topic, "\uFFFD"),
			ContentType: strings.ToValidUTF8(contentType, "\uFFFD"), Id: strings.ToValidUTF8(id, "\uFFFD"),
		}
		for k, v := range in.Metadata {
			if want.Metadata == nil {
				want.Metadata = map[string]string{}
			}
			// Two keys may become one after the replacement; either value is
			// acceptable then, so such inputs compare keys only.
			want.Metadata[strings.ToValidUTF8(k, "\uFFFD")] = strings.ToValidUTF8(v, "\uFFFD")
		}
		bs, err := c.Marshal(in)
		require.NoError(t, err)
		b := bs.Materialize()
		bs.Free()
		require.Equal(t, sizePullResponse(in), len(b))
		got := &proto.PullMessagesResponse{}
		require.NoError(t, gproto.Unmarshal(b, got))
		collided := len(want.Metadata) != len(in.Metadata)
		if collided {
			require.Len(t, got.Metadata, len(want.Metadata))
			for k := range want.Metadata {
				require.Contains(t, got.Metadata, k)
				require.True(t, utf8.ValidString(got.Metadata[k]))
			}
			got.Metadata, want.Metadata = nil, nil
		}
		require.True(t, gproto.Equal(want, got), "want %v\ngot  %v", want, got)
		// Each string on its own: halves of a sequence in two fields would
		// read as valid UTF-8 once concatenated.
		if !collided && allValidUTF8(topic, contentType, id, pairs) {
			require.True(t, gproto.Equal(in, got), "valid UTF-8 is sent as it is")
		}
	})
}

func allValidUTF8(ss ...string) bool {
	for _, s := range ss {
		if !utf8.ValidString(s) {
			return false
		}
	}
	return true
}

func TestOtherMessagesUseProto(t *testing.T) {
	c := newCodec()
	in := &proto.BulkPublishResponse{FailedEntries: []*proto.BulkPublishResponseFailedEntry{{EntryId: "1", Error: "bad"}}}
	bs, err := c.Marshal(in)
	require.NoError(t, err)
	out := &proto.BulkPublishResponse{}
	require.NoError(t, c.Unmarshal(bs, out))
	require.True(t, gproto.Equal(in, out))
	bs.Free()
}
