// Command tweetapp is the demo application of the end-to-end tests: a tiny
// "Twitter clone" that publishes tweets and likes through Dapr's HTTP API and
// subscribes to them, with plain net/http and no Dapr SDK.
//
// Environment:
//
//	APP_PORT        port to listen on (default 3000)
//	DAPR_HTTP_PORT  daprd's HTTP port (default 3500)
//	PUBSUB_NAME     the pub/sub component (default pubsub)
//	APP_DELAY       optional duration (such as 5s) every event handler waits
//	                before it answers, to test shutdowns during handling
//
// API:
//
//	POST /tweets {"text": "...", "behavior": "..."}   publish TWITTERCLONE.tweet_created, 201 {"id": ...}
//	POST /tweets/{id}/likes {"behavior": "..."}       publish TWITTERCLONE.tweet_liked, 201 {"id": ...}
//	POST /bulk/{topic} [entries]                      daprd's bulk publish, answered with daprd's status and body
//	GET  /received                                    everything the subscriptions received
//
// Query parameters of the POSTs (such as metadata.ttlInSeconds=1) are passed
// on to daprd. The "behavior" of an event decides how its handler answers:
// "retry-once" answers RETRY on the first attempt, "fail-once" answers HTTP
// 500 on the first attempt, "fail-always" answers HTTP 500 every time, "drop"
// answers DROP, anything else SUCCESS.
package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Topics and the dead-letter topic of the demo.
const (
	TopicCreated    = "TWITTERCLONE.tweet_created"
	TopicLiked      = "TWITTERCLONE.tweet_liked"
	TopicDeadLetter = "TWITTERCLONE.deadletter"
	TopicRaw        = "TWITTERCLONE.raw"
	TopicBulk       = "TWITTERCLONE.bulk"
	// TopicFailed receives the component's dead letters of tweet_liked
	// (deadLetterSubject TWITTERCLONE.failed.{topic}).
	TopicFailed = "TWITTERCLONE.failed.TWITTERCLONE.tweet_liked"
)

// Tweet is the data of a tweet_created event; a like carries the tweet's id.
type Tweet struct {
	ID       string `json:"id"`
	Text     string `json:"text,omitempty"`
	Behavior string `json:"behavior,omitempty"`
}

// Record is one delivery to one of the app's subscription routes.
type Record struct {
	Route string `json:"route"`
	Topic string `json:"topic"`
	// ID is the CloudEvent id (for bulk entries, the event's id if the entry
	// is a CloudEvent, else the entry id).
	ID string `json:"id"`
	// Attempt counts deliveries of this id on this topic, from 1.
	Attempt int `json:"attempt"`
	// Data is the CloudEvent's data; for raw subscriptions, the bare payload
	// daprd received from the broker (decoded from data_base64).
	Data json.RawMessage `json:"data"`
	// Event is the whole request body (the CloudEvent) for non-bulk routes.
	Event json.RawMessage `json:"event,omitempty"`
	Raw   bool            `json:"raw"`
	// BatchSize is the number of entries of the bulk request (bulk route only).
	BatchSize int       `json:"batchSize,omitempty"`
	Time      time.Time `json:"time"`
	Status    string    `json:"status"`
	// TraceParent is the W3C traceparent header daprd sent with the event.
	TraceParent string `json:"traceparent,omitempty"`
	// DeadLetter holds the Dead-Letter-* metadata daprd sent as headers,
	// keyed in lower case.
	DeadLetter map[string]string `json:"deadLetter,omitempty"`
}

type app struct {
	daprURL string
	pubsub  string
	delay   time.Duration
	client  *http.Client

	mu       sync.Mutex
	records  []Record
	attempts map[string]int
	batches  []int
}

func main() {
	a := &app{
		daprURL:  "http://127.0.0.1:" + env("DAPR_HTTP_PORT", "3500"),
		pubsub:   env("PUBSUB_NAME", "pubsub"),
		client:   &http.Client{Timeout: 30 * time.Second},
		attempts: map[string]int{},
	}
	if d := os.Getenv("APP_DELAY"); d != "" {
		var err error
		if a.delay, err = time.ParseDuration(d); err != nil {
			log.Fatalf("APP_DELAY: %v", err)
		}
	}
	addr := "127.0.0.1:" + env("APP_PORT", "3000")
	srv := &http.Server{Addr: addr, Handler: a.routes(), ReadHeaderTimeout: 10 * time.Second}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	log.Printf("tweetapp listening on %s, daprd at %s, pubsub %q", addr, a.daprURL, a.pubsub)
	if err := srv.ListenAndServe(); err != nil && !errors.Is(err, http.ErrServerClosed) {
		log.Fatal(err)
	}
}

func env(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

func (a *app) routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /tweets", a.postTweet)
	mux.HandleFunc("POST /tweets/{id}/likes", a.postLike)
	mux.HandleFunc("POST /bulk/{topic}", a.postBulk)
	mux.HandleFunc("GET /received", a.getReceived)
	mux.HandleFunc("GET /dapr/subscribe", a.subscribe)
	mux.HandleFunc("POST /events/created", a.event(TopicCreated, false))
	mux.HandleFunc("POST /events/liked", a.event(TopicLiked, false))
	mux.HandleFunc("POST /events/deadletter", a.event(TopicDeadLetter, false))
	mux.HandleFunc("POST /events/raw", a.event(TopicRaw, true))
	mux.HandleFunc("POST /events/bulk", a.bulkEvent)
	mux.HandleFunc("POST /events/failed", a.event(TopicFailed, false))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusNoContent) })
	return mux
}

// subscribe is Dapr's programmatic subscription endpoint. The JSON shape is
// daprd's SubscriptionJSON (pkg/runtime/pubsub/subscriptions.go): pubsubname,
// topic, route, deadLetterTopic, metadata, bulkSubscribe.
func (a *app) subscribe(w http.ResponseWriter, _ *http.Request) {
	type bulk struct {
		Enabled            bool `json:"enabled"`
		MaxMessagesCount   int  `json:"maxMessagesCount,omitempty"`
		MaxAwaitDurationMs int  `json:"maxAwaitDurationMs,omitempty"`
	}
	type sub struct {
		PubsubName      string            `json:"pubsubname"`
		Topic           string            `json:"topic"`
		Route           string            `json:"route"`
		DeadLetterTopic string            `json:"deadLetterTopic,omitempty"`
		Metadata        map[string]string `json:"metadata,omitempty"`
		BulkSubscribe   *bulk             `json:"bulkSubscribe,omitempty"`
	}
	writeJSON(w, http.StatusOK, []sub{
		{PubsubName: a.pubsub, Topic: TopicCreated, Route: "/events/created", DeadLetterTopic: TopicDeadLetter},
		{PubsubName: a.pubsub, Topic: TopicLiked, Route: "/events/liked"},
		{PubsubName: a.pubsub, Topic: TopicDeadLetter, Route: "/events/deadletter"},
		{PubsubName: a.pubsub, Topic: TopicRaw, Route: "/events/raw", Metadata: map[string]string{"rawPayload": "true"}},
		{PubsubName: a.pubsub, Topic: TopicBulk, Route: "/events/bulk", BulkSubscribe: &bulk{Enabled: true, MaxMessagesCount: 10, MaxAwaitDurationMs: 500}},
		{PubsubName: a.pubsub, Topic: TopicFailed, Route: "/events/failed"},
	})
}

func newID() string {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func (a *app) postTweet(w http.ResponseWriter, r *http.Request) {
	var in struct {
		Text     string `json:"text"`
		Behavior string `json:"behavior"`
	}
	if err := json.NewDecoder(r.Body).Decode(&in); err != nil || in.Text == "" {
		http.Error(w, `body must be {"text": "..."}`, http.StatusBadRequest)
		return
	}
	t := Tweet{ID: newID(), Text: in.Text, Behavior: in.Behavior}
	a.publish(w, r, TopicCreated, t)
}

func (a *app) postLike(w http.ResponseWriter, r *http.Request) {
	var in struct {
		Behavior string `json:"behavior"`
	}
	_ = json.NewDecoder(r.Body).Decode(&in) // the body is optional
	t := Tweet{ID: r.PathValue("id"), Behavior: in.Behavior}
	a.publish(w, r, TopicLiked, t)
}

// publish sends t to daprd's publish API and answers 201 with its id, or
// daprd's error with a 5xx status.
func (a *app) publish(w http.ResponseWriter, r *http.Request, topic string, t Tweet) {
	body, _ := json.Marshal(t)
	u := fmt.Sprintf("%s/v1.0/publish/%s/%s", a.daprURL, a.pubsub, topic)
	if r.URL.RawQuery != "" {
		u += "?" + r.URL.RawQuery
	}
	status, resp, err := a.post(r.Context(), u, body)
	switch {
	case err != nil:
		http.Error(w, "publish: "+err.Error(), http.StatusBadGateway)
	case status/100 != 2:
		if status < 500 {
			status = http.StatusBadGateway
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		_, _ = w.Write(resp)
	default:
		writeJSON(w, http.StatusCreated, map[string]string{"id": t.ID, "topic": topic})
	}
}

// postBulk forwards a JSON array of bulk entries to daprd and answers with
// daprd's status and body (the failed entries, if any).
func (a *app) postBulk(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	u := fmt.Sprintf("%s/v1.0-alpha1/publish/bulk/%s/%s", a.daprURL, a.pubsub, r.PathValue("topic"))
	if r.URL.RawQuery != "" {
		u += "?" + r.URL.RawQuery
	}
	status, resp, err := a.post(r.Context(), u, body)
	if err != nil {
		http.Error(w, "bulk publish: "+err.Error(), http.StatusBadGateway)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = w.Write(resp)
}

func (a *app) post(ctx context.Context, u string, body []byte) (int, []byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u, bytes.NewReader(body))
	if err != nil {
		return 0, nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := a.client.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, b, err
}

func (a *app) getReceived(w http.ResponseWriter, _ *http.Request) {
	a.mu.Lock()
	defer a.mu.Unlock()
	writeJSON(w, http.StatusOK, map[string]any{"events": a.records, "batches": a.batches})
}

// cloudEvent is the part of a CloudEvent the handlers look at.
type cloudEvent struct {
	ID         string          `json:"id"`
	Topic      string          `json:"topic"`
	Data       json.RawMessage `json:"data"`
	DataBase64 string          `json:"data_base64"`
}

// payload returns the event's data: data, or data_base64 decoded (how daprd
// hands a rawPayload subscription the bare message).
func (ce *cloudEvent) payload() (json.RawMessage, bool) {
	if ce.DataBase64 != "" {
		b, err := base64.StdEncoding.DecodeString(ce.DataBase64)
		if err == nil {
			if json.Valid(b) {
				return b, true
			}
			q, _ := json.Marshal(string(b))
			return q, true
		}
	}
	return ce.Data, false
}

// record stores a delivery and returns the status to answer with, or "" for
// an HTTP 500.
func (a *app) record(rec Record) Record {
	var t Tweet
	_ = json.Unmarshal(rec.Data, &t)
	a.mu.Lock()
	key := rec.Topic + "\x00" + rec.ID
	a.attempts[key]++
	rec.Attempt = a.attempts[key]
	rec.Time = time.Now()
	switch {
	case t.Behavior == "retry-once" && rec.Attempt == 1:
		rec.Status = "RETRY"
	case t.Behavior == "fail-once" && rec.Attempt == 1:
		rec.Status = "HTTP500"
	case t.Behavior == "fail-always" && rec.Topic != TopicFailed:
		rec.Status = "HTTP500"
	case t.Behavior == "drop":
		rec.Status = "DROP"
	default:
		rec.Status = "SUCCESS"
	}
	a.records = append(a.records, rec)
	a.mu.Unlock()
	return rec
}

func (a *app) event(topic string, raw bool) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		var ce cloudEvent
		if err := json.Unmarshal(body, &ce); err != nil {
			log.Printf("%s: not a CloudEvent: %v", topic, err)
			http.Error(w, "not a CloudEvent", http.StatusBadRequest)
			return
		}
		// The record's topic is the subscription's: a dead letter keeps the
		// CloudEvent of the original, whose topic field names the original topic.
		data, isRaw := ce.payload()
		rec := a.record(Record{Route: r.URL.Path, Topic: topic, ID: ce.ID, Data: data, Event: body, Raw: raw && isRaw,
			TraceParent: r.Header.Get("traceparent"), DeadLetter: deadLetterHeaders(r.Header)})
		log.Printf("received %s id=%s attempt=%d data=%s -> %s", topic, ce.ID, rec.Attempt, data, rec.Status)
		a.wait(r.Context())
		if rec.Status == "HTTP500" {
			http.Error(w, "failing on purpose", http.StatusInternalServerError)
			return
		}
		writeJSON(w, http.StatusOK, map[string]string{"status": rec.Status})
	}
}

// bulkEvent handles daprd's bulk subscribe envelope: {"entries": [{"entryId",
// "event", "metadata", "contentType"}], ...}, answered with a status per entry.
func (a *app) bulkEvent(w http.ResponseWriter, r *http.Request) {
	var in struct {
		Topic   string `json:"topic"`
		Entries []struct {
			EntryID string          `json:"entryId"`
			Event   json.RawMessage `json:"event"`
		} `json:"entries"`
	}
	if err := json.NewDecoder(r.Body).Decode(&in); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	a.mu.Lock()
	a.batches = append(a.batches, len(in.Entries))
	a.mu.Unlock()
	type status struct {
		EntryID string `json:"entryId"`
		Status  string `json:"status"`
	}
	out := struct {
		Statuses []status `json:"statuses"`
	}{Statuses: []status{}}
	for _, e := range in.Entries {
		var ce cloudEvent
		id, data, isRaw := e.EntryID, json.RawMessage(e.Event), false
		if json.Unmarshal(e.Event, &ce) == nil && ce.ID != "" {
			id = ce.ID
			data, isRaw = ce.payload()
		}
		rec := a.record(Record{Route: r.URL.Path, Topic: TopicBulk, ID: id, Data: data, Raw: isRaw, BatchSize: len(in.Entries)})
		st := rec.Status
		if st == "HTTP500" {
			// A bulk response has no HTTP status per entry: a failure is RETRY.
			st = "RETRY"
		}
		out.Statuses = append(out.Statuses, status{EntryID: e.EntryID, Status: st})
	}
	log.Printf("received a batch of %d on %s", len(in.Entries), in.Topic)
	a.wait(r.Context())
	writeJSON(w, http.StatusOK, out)
}

func (a *app) wait(ctx context.Context) {
	if a.delay <= 0 {
		return
	}
	select {
	case <-time.After(a.delay):
	case <-ctx.Done():
	}
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// deadLetterHeaders picks the Dead-Letter-* headers, keyed in lower case.
func deadLetterHeaders(h http.Header) map[string]string {
	var out map[string]string
	for k, v := range h {
		if k := strings.ToLower(k); strings.HasPrefix(k, "dead-letter-") && len(v) > 0 {
			if out == nil {
				out = map[string]string{}
			}
			out[k] = v[0]
		}
	}
	return out
}
