//go:build faults

package faults

import (
	"context"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/dapr/components-contrib/pubsub"
	proto "github.com/dapr/dapr/pkg/proto/components/v1"
	"github.com/google/uuid"
	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nats-server/v2/server"
	natsjs "github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nkeys"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/dapr-nats/jetstream-pubsub/internal/natstest"
	"github.com/dapr-nats/jetstream-pubsub/jetstream"
	"github.com/dapr-nats/jetstream-pubsub/pluggable"
)

// rejectedCreds checks a component whose credentials the server refuses:
// Init fails saying so, and no error text holds a secret.
func rejectedCreds(t *testing.T, props map[string]string) {
	t.Helper()
	ps, err := secInit(t, props)
	secRejected(t, ps, err)
	require.Error(t, err, "Init must fail when NATS rejects the credentials")
	assert.Contains(t, err.Error(), "rejected the credentials")
}

func TestSecurityToken(t *testing.T) {
	token := secret("tok-" + uuid.NewString())
	ns := natstest.Start(t, func(o *server.Options) { o.Authorization = token })

	ps, err := secInit(t, secProps(ns.ClientURL(), "token", token))
	require.NoError(t, err)
	secRoundTrip(t, ps, "sec.token")

	rejectedCreds(t, secProps(ns.ClientURL(), "token", secret("tok-"+uuid.NewString())))
	// No credentials at all is refused the same way.
	rejectedCreds(t, secProps(ns.ClientURL()))
}

func TestSecurityUserPassword(t *testing.T) {
	password := secret("pw-" + uuid.NewString())
	ns := natstest.Start(t, func(o *server.Options) { o.Username, o.Password = "app", password })

	ps, err := secInit(t, secProps(ns.ClientURL(), "user", "app", "password", password))
	require.NoError(t, err)
	secRoundTrip(t, ps, "sec.userpass")

	rejectedCreds(t, secProps(ns.ClientURL(), "user", "app", "password", secret("pw-"+uuid.NewString())))
	rejectedCreds(t, secProps(ns.ClientURL(), "user", "intruder", "password", password))
}

func TestSecurityNKey(t *testing.T) {
	seedOf := func() (string, string) {
		kp, err := nkeys.CreateUser()
		require.NoError(t, err)
		pub, err := kp.PublicKey()
		require.NoError(t, err)
		seed, err := kp.Seed()
		require.NoError(t, err)
		return pub, secret(string(seed))
	}
	pub, seed := seedOf()
	ns := natstest.Start(t, func(o *server.Options) { o.Nkeys = []*server.NkeyUser{{Nkey: pub}} })

	ps, err := secInit(t, secProps(ns.ClientURL(), "nkeySeed", seed))
	require.NoError(t, err)
	secRoundTrip(t, ps, "sec.nkey")

	_, unknown := seedOf()
	rejectedCreds(t, secProps(ns.ClientURL(), "nkeySeed", unknown))
}

// TestSecurityOperatorJWT runs the server in operator mode (decentralised
// JWT auth) with keys and JWTs made here: operator, an account with
// JetStream, and users signed by it.
func TestSecurityOperatorJWT(t *testing.T) {
	dir := t.TempDir()
	operator, err := nkeys.CreateOperator()
	require.NoError(t, err)
	opPub, err := operator.PublicKey()
	require.NoError(t, err)
	opSeed, err := operator.Seed()
	require.NoError(t, err)
	secret(string(opSeed))

	// newAccount makes an account signed by the operator, with JetStream
	// unless it is the system account.
	newAccount := func(name string, js bool) (nkeys.KeyPair, string, string) {
		kp, err := nkeys.CreateAccount()
		require.NoError(t, err)
		pub, err := kp.PublicKey()
		require.NoError(t, err)
		seed, err := kp.Seed()
		require.NoError(t, err)
		secret(string(seed))
		ac := jwt.NewAccountClaims(pub)
		ac.Name = name
		if js {
			ac.Limits.JetStreamLimits = jwt.JetStreamLimits{MemoryStorage: -1, DiskStorage: -1, Streams: -1, Consumer: -1}
		}
		token, err := ac.Encode(operator)
		require.NoError(t, err)
		return kp, pub, token
	}
	// newUser returns a user JWT signed by account, the user's seed, and a
	// creds file holding both.
	newUser := func(account nkeys.KeyPair) (string, string, string) {
		kp, err := nkeys.CreateUser()
		require.NoError(t, err)
		pub, err := kp.PublicKey()
		require.NoError(t, err)
		seed, err := kp.Seed()
		require.NoError(t, err)
		uc := jwt.NewUserClaims(pub)
		uc.Name = "dapr"
		token, err := uc.Encode(account)
		require.NoError(t, err)
		creds, err := jwt.FormatUserConfig(token, seed)
		require.NoError(t, err)
		file := filepath.Join(dir, pub[:12]+".creds")
		require.NoError(t, os.WriteFile(file, creds, 0o600))
		return secret(token), secret(string(seed)), file
	}

	_, sysPub, sysJWT := newAccount("SYS", false)
	account, accountPub, accountJWT := newAccount("app", true)
	oc := jwt.NewOperatorClaims(opPub)
	oc.SystemAccount = sysPub
	opJWT, err := oc.Encode(operator)
	require.NoError(t, err)
	opClaims, err := jwt.DecodeOperatorClaims(opJWT)
	require.NoError(t, err)
	resolver := &server.MemAccResolver{}
	require.NoError(t, resolver.Store(sysPub, sysJWT))
	require.NoError(t, resolver.Store(accountPub, accountJWT))
	ns := natstest.Start(t, func(o *server.Options) {
		o.TrustedOperators = []*jwt.OperatorClaims{opClaims}
		o.AccountResolver = resolver
		o.SystemAccount = sysPub
	})

	userJWT, userSeed, credsFile := newUser(account)

	t.Run("jwt and seedKey", func(t *testing.T) {
		ps, err := secInit(t, secProps(ns.ClientURL(), "jwt", userJWT, "seedKey", userSeed))
		require.NoError(t, err)
		secRoundTrip(t, ps, "sec.jwt")
	})
	t.Run("creds file", func(t *testing.T) {
		ps, err := secInit(t, secProps(ns.ClientURL(), "credsFile", credsFile))
		require.NoError(t, err)
		secRoundTrip(t, ps, "sec.creds")
	})
	t.Run("JWT of an unknown account", func(t *testing.T) {
		stranger, _, _ := newAccount("stranger", true) // never given to the server
		jwt2, seed2, creds2 := newUser(stranger)
		rejectedCreds(t, secProps(ns.ClientURL(), "jwt", jwt2, "seedKey", seed2))
		rejectedCreds(t, secProps(ns.ClientURL(), "credsFile", creds2))
	})
	t.Run("JWT with the seed of another user", func(t *testing.T) {
		_, otherSeed, _ := newUser(account)
		rejectedCreds(t, secProps(ns.ClientURL(), "jwt", userJWT, "seedKey", otherSeed))
	})
	t.Run("creds file missing", func(t *testing.T) {
		missing := filepath.Join(dir, "missing.creds")
		_, err := secInit(t, secProps(ns.ClientURL(), "credsFile", missing))
		require.Error(t, err)
		assert.Contains(t, err.Error(), `"credsFile"`)
		assert.Contains(t, err.Error(), "no such file")
		secNoSecret(t, "the Init error", err.Error())
	})
	t.Run("creds file that does not parse", func(t *testing.T) {
		garbage := filepath.Join(dir, "garbage.creds")
		require.NoError(t, os.WriteFile(garbage, []byte("this is not a creds file\n"), 0o600))
		_, err := secInit(t, secProps(ns.ClientURL(), "credsFile", garbage))
		require.Error(t, err)
		assert.Contains(t, err.Error(), `"credsFile"`)
	})
}

func TestSecurityTLS(t *testing.T) {
	dir := t.TempDir()
	pki := secNewPKI(t, dir, "good")
	other := secNewPKI(t, dir, "other")
	password := secret("pw-" + uuid.NewString())
	ns := natstest.Start(t, pki.serverTLS(t))
	nsPass := natstest.Start(t, pki.serverTLS(t), func(o *server.Options) { o.Username, o.Password = "app", password })

	tlsProps := func(url, ca, cert, key string, kv ...string) map[string]string {
		return secProps(url, append([]string{"tls_ca_file", ca, "tls_client_cert", cert, "tls_client_key", key}, kv...)...)
	}

	t.Run("mutual TLS", func(t *testing.T) {
		ps, err := secInit(t, tlsProps(ns.ClientURL(), pki.CA, pki.ClientCert, pki.ClientKey))
		require.NoError(t, err)
		secRoundTrip(t, ps, "sec.tls")
	})
	t.Run("server certificate from an untrusted CA", func(t *testing.T) {
		ps, err := secInit(t, tlsProps(ns.ClientURL(), other.CA, pki.ClientCert, pki.ClientKey))
		texts := secRejected(t, ps, err)
		require.Error(t, err, "a server the CA does not vouch for is a configuration error, not an outage")
		assert.Contains(t, texts[0], "tls_ca_file")
		assert.Contains(t, texts[0], "certificate signed by unknown authority")
	})
	// With TLS 1.3 the server checks the client certificate after the
	// client's handshake is done; the client then reads the server's alert
	// ("remote error: tls: certificate required"), and Init fails, or only
	// sees the connection closed, which could be an outage: then Init
	// succeeds, but Ping and Publish fail.
	t.Run("client certificate from another CA", func(t *testing.T) {
		ps, err := secInit(t, tlsProps(ns.ClientURL(), pki.CA, other.ClientCert, other.ClientKey))
		texts := secRejected(t, ps, err)
		if err != nil {
			assert.Contains(t, texts[0], "tls_client_cert")
		}
	})
	t.Run("no client certificate", func(t *testing.T) {
		ps, err := secInit(t, secProps(ns.ClientURL(), "tls_ca_file", pki.CA))
		texts := secRejected(t, ps, err)
		if err != nil {
			assert.Contains(t, texts[0], "tls_client_cert")
		}
	})
	t.Run("client certificate that does not parse", func(t *testing.T) {
		bad := filepath.Join(dir, "bad-cert.pem")
		require.NoError(t, os.WriteFile(bad, []byte("-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n"), 0o600))
		_, err := secInit(t, tlsProps(ns.ClientURL(), pki.CA, bad, pki.ClientKey))
		require.Error(t, err)
		assert.Contains(t, err.Error(), `"tls_client_cert"`)
		secNoSecret(t, "the Init error", err.Error())
	})
	t.Run("client key that does not parse", func(t *testing.T) {
		bad := filepath.Join(dir, "bad-key.pem")
		require.NoError(t, os.WriteFile(bad, []byte("not a key"), 0o600))
		_, err := secInit(t, tlsProps(ns.ClientURL(), pki.CA, pki.ClientCert, bad))
		require.Error(t, err)
		assert.Contains(t, err.Error(), `"tls_client_key"`)
	})
	t.Run("client key of another certificate", func(t *testing.T) {
		_, err := secInit(t, tlsProps(ns.ClientURL(), pki.CA, pki.ClientCert, other.ClientKey))
		require.Error(t, err)
		assert.Contains(t, err.Error(), `"tls_client_key"`)
		secNoSecret(t, "the Init error", err.Error())
	})
	t.Run("CA file that does not parse", func(t *testing.T) {
		bad := filepath.Join(dir, "bad-ca.pem")
		require.NoError(t, os.WriteFile(bad, []byte("garbage"), 0o600))
		_, err := secInit(t, tlsProps(ns.ClientURL(), bad, pki.ClientCert, pki.ClientKey))
		require.Error(t, err)
		assert.Contains(t, err.Error(), `"tls_ca_file"`)
	})
	t.Run("TLS with user and password", func(t *testing.T) {
		ps, err := secInit(t, tlsProps(nsPass.ClientURL(), pki.CA, pki.ClientCert, pki.ClientKey, "user", "app", "password", password))
		require.NoError(t, err)
		secRoundTrip(t, ps, "sec.tls.userpass")
		rejectedCreds(t, tlsProps(nsPass.ClientURL(), pki.CA, pki.ClientCert, pki.ClientKey, "user", "app", "password", secret("pw-"+uuid.NewString())))
	})
}

// TestSecurityURLCredentialsRedacted puts the password in natsURL, as
// nats://user:pass@host, and checks that errors and logs show neither it
// nor a token given the same way.
func TestSecurityURLCredentialsRedacted(t *testing.T) {
	password := secret("pw-" + uuid.NewString())
	ns := natstest.Start(t, func(o *server.Options) { o.Username, o.Password = "app", password })
	host := ns.Addr().String()

	ps, err := secInit(t, secProps("nats://app:"+password+"@"+host))
	require.NoError(t, err)
	secRoundTrip(t, ps, "sec.urlpass")

	wrong := secret("pw-" + uuid.NewString())
	_, err = secInit(t, secProps("nats://app:"+wrong+"@"+host))
	require.Error(t, err)
	assert.Contains(t, err.Error(), "rejected the credentials")
	assert.Contains(t, err.Error(), "nats://***@"+host, "the URL is shown, without its user information")
	secNoSecret(t, "the Init error", err.Error())

	// A server that is not up yet: Init succeeds and logs the URL.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	down := l.Addr().String()
	require.NoError(t, l.Close())
	token := secret("tok-" + uuid.NewString())
	_, err = secInit(t, secProps("nats://"+token+"@"+down+",nats://app:"+password+"@"+down))
	require.NoError(t, err)
	assert.Eventually(t, func() bool { return logsContain("nats://***@" + down) }, secShort, secTick, "the warning names the redacted URL")

	// A URL that does not parse is named, redacted, in the metadata error.
	for _, bad := range []string{"nats//app:" + password + "@" + host, "http://app:" + password + "@" + host} {
		_, err = secInit(t, secProps(bad))
		require.Error(t, err)
		assert.Contains(t, err.Error(), `"natsURL"`)
		secNoSecret(t, "the metadata error", err.Error())
	}
}

// TestSecurityBinary runs the built component: its socket is 0660, it never
// listens on TCP, and what it writes (stdout, where dapr's logger goes, and
// stderr, both captured into logSink for TestMain's secret check) holds no
// credential, whether NATS accepts or rejects them.
func TestSecurityBinary(t *testing.T) {
	token := secret("tok-" + uuid.NewString())
	wrong := secret("tok-" + uuid.NewString())
	ns := natstest.Start(t, func(o *server.Options) { o.Authorization = token })
	p := secStartBinary(t)
	pid := p.Pid()

	fi, err := os.Lstat(p.socket)
	require.NoError(t, err)
	assert.Equal(t, fs.ModeSocket|0o660, fi.Mode(), "socket mode %v", fi.Mode())

	conn := secDial(t, p.socket)
	client := proto.NewPubSubClient(conn)

	// Rejected: a clear gRPC error without the token.
	ctx := secInstance(t, "rejected")
	err = secGRPCInit(ctx, client, secProps(ns.ClientURL(), "token", wrong))
	require.Error(t, err)
	assert.Equal(t, codes.InvalidArgument, status.Code(err))
	assert.Contains(t, err.Error(), "rejected the credentials")
	secNoSecret(t, "the gRPC error", err.Error())

	// The same with the token in the URL: the error shows it redacted.
	ctx = secInstance(t, "url-token")
	err = secGRPCInit(ctx, client, secProps("nats://"+wrong+"@"+ns.Addr().String()))
	require.Error(t, err)
	assert.Contains(t, err.Error(), "nats://***@"+ns.Addr().String())
	secNoSecret(t, "the gRPC error", err.Error())

	// Accepted: publish and receive through the process.
	ctx = secInstance(t, "accepted")
	require.NoError(t, secGRPCInit(ctx, client, secProps(ns.ClientURL(), "token", token, "consumerID", "bin")))
	pull, err := client.PullMessages(ctx)
	require.NoError(t, err)
	require.NoError(t, pull.Send(&proto.PullMessagesRequest{Topic: &proto.Topic{Name: "sec.bin"}}))
	_, err = client.Publish(ctx, &proto.PublishRequest{Topic: "sec.bin", Data: []byte("via binary")})
	require.NoError(t, err)
	msg, err := pull.Recv()
	require.NoError(t, err)
	assert.Equal(t, "via binary", string(msg.GetData()))
	require.NoError(t, pull.Send(&proto.PullMessagesRequest{AckMessageId: msg.GetId()}))

	// Its NATS connection is an outgoing TCP connection; nothing listens.
	sockets := secTCPSockets(t, pid)
	assert.Empty(t, sockets["0A"], "the component must not listen on TCP")
	assert.NotEmpty(t, sockets["01"], "the method sees the component's own NATS connection")
	// The method is sound: it does see this test process's listener (the
	// in-process nats-server).
	assert.NotEmpty(t, secTCPSockets(t, os.Getpid())["0A"])

	require.NoError(t, pull.CloseSend())
	_ = conn.Close()
	p.stop(t)
	logs := p.Output()
	assert.Regexp(t, `component .*accepted.* initialized`, logs, "the output was captured")
	assert.NotContains(t, logs, token)
	assert.NotContains(t, logs, wrong)
}

// TestSecuritySocketMode checks pluggable.Listen itself, in-process, with the
// default and a stricter mode, and that world access is refused.
func TestSecuritySocketMode(t *testing.T) {
	folder, err := os.MkdirTemp("", "faults-sock")
	require.NoError(t, err)
	t.Cleanup(func() { _ = os.RemoveAll(folder) })
	for _, tc := range []struct {
		mode fs.FileMode
		want fs.FileMode
	}{{0, 0o660}, {0o600, 0o600}} {
		l, path, err := pluggable.Listen(pluggable.Options{SocketFolder: folder, SocketName: fmt.Sprintf("mode%o", tc.mode), SocketMode: tc.mode})
		require.NoError(t, err)
		fi, err := os.Lstat(path)
		require.NoError(t, err)
		assert.Equal(t, fs.ModeSocket|tc.want, fi.Mode(), "socket %s", filepath.Base(path))
		require.NoError(t, l.Close())
	}
	for _, mode := range []fs.FileMode{0o666, 0o662, 0o664, 0o777} {
		_, _, err := pluggable.Listen(pluggable.Options{SocketFolder: folder, SocketName: "open", SocketMode: mode})
		require.Error(t, err, "mode %o", mode)
		assert.Contains(t, err.Error(), "every user")
	}
	_, err = os.Lstat(filepath.Join(folder, "open.sock"))
	assert.True(t, os.IsNotExist(err), "no socket is created with a refused mode")
	// The folder it creates is not world-readable either.
	nested := filepath.Join(folder, "nested")
	l, _, err := pluggable.Listen(pluggable.Options{SocketFolder: nested})
	require.NoError(t, err)
	require.NoError(t, l.Close())
	fi, err := os.Stat(nested)
	require.NoError(t, err)
	assert.Zero(t, fi.Mode().Perm()&0o007, "socket folder mode %v", fi.Mode())
}

// TestSecurityCredsFileRenewed runs the component on a creds file mounted as
// a Kubernetes Secret: the user JWT expires while it runs, then the Secret
// is updated with a renewed one; later that user is revoked in the account
// and the Secret updated again. Each time the component reconnects with the
// file as it is then, and what was published meanwhile is delivered.
func TestSecurityCredsFileRenewed(t *testing.T) {
	failedAttempts := regexp.MustCompile(`connection attempts? failed`)
	op := secStartOperator(t)
	js, err := natsjs.New(op.client(t))
	require.NoError(t, err)
	vol := &secSecretVolume{dir: t.TempDir()}
	_, expiring := op.user(t, func(uc *jwt.UserClaims) { uc.Expires = time.Now().Add(3 * time.Second).Unix() })
	file := vol.write(t, "nats.creds", expiring)

	ps, err := secInit(t, secProps(op.ns.ClientURL(), "credsFile", file, "consumerID", "renew"))
	require.NoError(t, err)
	const topic = "sec.renew"
	got := make(chan string, 16)
	require.NoError(t, ps.Subscribe(t.Context(), pubsub.SubscribeRequest{Topic: topic}, func(_ context.Context, m *pubsub.NewMessage) error {
		got <- string(m.Data)
		return nil
	}))
	publish := func(via string) string {
		t.Helper()
		data, _ := secCloudEvent(t, topic, via)
		ctx, cancel := context.WithTimeout(t.Context(), secWait)
		defer cancel()
		if via == "component" {
			require.NoError(t, ps.Publish(ctx, &pubsub.PublishRequest{PubsubName: "pubsub", Topic: topic, Data: data}))
		} else {
			_, err := js.Publish(ctx, topic, data)
			require.NoError(t, err)
		}
		return string(data)
	}
	delivered := func(want string) {
		t.Helper()
		select {
		case m := <-got:
			require.JSONEq(t, want, m)
		case <-time.After(secWait):
			t.Fatalf("a message published before was not delivered within %s", secWait)
		}
	}
	delivered(publish("component"))

	// down waits until Ping fails, and checks that Ping and Publish say
	// what to do about the credentials, without a secret: at once, and
	// once attempts with the same file failed.
	down := func(why string) {
		t.Helper()
		check := func(when string) {
			t.Helper()
			var pingErr error
			require.Eventually(t, func() bool {
				ctx, cancel := context.WithTimeout(t.Context(), time.Second)
				defer cancel()
				pingErr = ps.Ping(ctx)
				return pingErr != nil && (when == "at once" || failedAttempts.MatchString(pingErr.Error()))
			}, secWait, secTick, "Ping passes after the user JWT %s", why)
			ctx, cancel := context.WithTimeout(t.Context(), time.Second)
			defer cancel()
			pubErr := ps.Publish(ctx, &pubsub.PublishRequest{PubsubName: "pubsub", Topic: topic, Data: []byte("x")})
			require.Error(t, pubErr)
			for what, err := range map[string]error{"Ping": pingErr, "Publish": pubErr} {
				t.Logf("%s %s after the user JWT %s: %v", what, when, why, err)
				secNoSecret(t, "the "+what+" error", err.Error())
				assert.Contains(t, err.Error(), "credsFile", "%s %s names the field to fix", what, when)
				assert.Contains(t, err.Error(), why, "%s %s says why NATS refuses the credentials", what, when)
			}
		}
		check("at once")
		check("after attempts")
	}
	up := func() {
		t.Helper()
		require.Eventually(t, func() bool {
			ctx, cancel := context.WithTimeout(t.Context(), time.Second)
			defer cancel()
			return ps.Ping(ctx) == nil
		}, secWait, secTick, "the component did not reconnect with the renewed creds file")
	}

	down("expired")
	meanwhile := publish("admin")
	renewedPub, renewed := op.user(t, nil)
	vol.write(t, "nats.creds", renewed)
	up()
	delivered(meanwhile)
	delivered(publish("component"))

	// The renewed user is revoked in the account: the server drops it.
	op.update(t, func(ac *jwt.AccountClaims) { ac.Revoke(renewedPub) })
	down("revoked")
	meanwhile = publish("admin")
	_, third := op.user(t, nil)
	vol.write(t, "nats.creds", third)
	up()
	delivered(meanwhile)
	delivered(publish("component"))
}

// secDeliveries subscribes ps to topic and returns the data delivered, in
// order. A message whose data contains "held" stays in the handler until
// release is closed.
func secDeliveries(t *testing.T, ps *jetstream.PubSub, topic string, release <-chan struct{}) <-chan string {
	t.Helper()
	got := make(chan string, 64)
	require.NoError(t, ps.Subscribe(t.Context(), pubsub.SubscribeRequest{Topic: topic}, func(ctx context.Context, m *pubsub.NewMessage) error {
		got <- string(m.Data)
		if strings.Contains(string(m.Data), "held") {
			select {
			case <-release:
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		return nil
	}))
	return got
}

// secAwaitData waits for each of want to be delivered on got, in any order,
// and returns how many deliveries were repeats.
func secAwaitData(t *testing.T, got <-chan string, want ...string) int {
	t.Helper()
	missing := map[string]bool{}
	for _, w := range want {
		missing[w] = true
	}
	again := 0
	deadline := time.After(secWait)
	for len(missing) > 0 {
		select {
		case m := <-got:
			if missing[m] {
				delete(missing, m)
			} else {
				again++
			}
		case <-deadline:
			t.Fatalf("%d of %d messages were not delivered within %s", len(missing), len(want), secWait)
		}
	}
	return again
}

// TestSecurityTLSFilesRotated runs the component on TLS files mounted as a
// Kubernetes Secret that cert-manager renews: the client certificate
// reissued by a new CA, and the CA bundle given the new CA, while NATS still
// trusts only the old one; then NATS restarts trusting only the new CA.
// The component reconnects with the files as they are now, without Init.
// Then the other way round: NATS restarts first with a third CA, and the
// Secret follows. What was published meanwhile, or held by the handler
// across the restart, is delivered.
func TestSecurityTLSFilesRotated(t *testing.T) {
	dir := t.TempDir()
	a, b, c := secNewPKI(t, dir, "rot-a"), secNewPKI(t, dir, "rot-b"), secNewPKI(t, dir, "rot-c")
	srv := newSecRestartable(t)
	ns := srv.restart(a.serverTLS(t))
	vol := &secSecretVolume{dir: t.TempDir()}
	mount := func(client *secPKI, cas ...*secPKI) map[string]string {
		var bundle []byte
		for _, ca := range cas {
			bundle = append(bundle, secReadFile(t, ca.CA)...)
		}
		return vol.writeAll(t, map[string][]byte{"ca.crt": bundle, "tls.crt": secReadFile(t, client.ClientCert), "tls.key": secReadFile(t, client.ClientKey)})
	}
	files := mount(a, a)
	ps, err := secInit(t, secProps(ns.ClientURL(), "tls_ca_file", files["ca.crt"], "tls_client_cert", files["tls.crt"], "tls_client_key", files["tls.key"], "consumerID", "rotate"))
	require.NoError(t, err)
	const topic = "sec.rotate"
	release := make(chan struct{})
	got := secDeliveries(t, ps, topic, release)
	publish := secPublisher(t, ps, topic)
	adminPublish := func(p *secPKI, data string) string {
		t.Helper()
		js, err := natsjs.New(secTLSClient(t, ns.ClientURL(), p))
		require.NoError(t, err)
		ctx, cancel := context.WithTimeout(t.Context(), secWait)
		defer cancel()
		_, err = js.Publish(ctx, topic, []byte(data))
		require.NoError(t, err)
		return data
	}
	connected := func(err error) bool { return err == nil }

	secAwaitData(t, got, publish("before"))
	held := publish("held across the restart")
	secAwaitData(t, got, held)

	// Renewed files first, then NATS trusts only the new CA.
	mount(b, a, b)
	ns = srv.restart(b.serverTLS(t))
	took, _ := secPingWithin(t, ps, secWait, connected, "reconnecting with the renewed certificate and CA bundle")
	t.Logf("reconnected %s after NATS restarted trusting only the new CA", took)
	meanwhile := adminPublish(b, "published while the component reconnected")
	close(release)
	again := secAwaitData(t, got, meanwhile, publish("after the rotation"))

	// NATS first, the files later.
	ns = srv.restart(c.serverTLS(t))
	_, pingErr := secPingWithin(t, ps, secWait, func(err error) bool { return err != nil }, "refused by NATS with a CA it does not know yet")
	t.Logf("Ping while NATS trusts a CA the files do not have yet: %v", pingErr)
	meanwhile = adminPublish(c, "published before the files were renewed")
	mount(c, c)
	took, _ = secPingWithin(t, ps, secWait, connected, "reconnecting once the files are renewed")
	t.Logf("reconnected %s after the files were renewed", took)
	again += secAwaitData(t, got, meanwhile, publish("after the second rotation"))
	t.Logf("%d messages delivered again", again)
}

// TestSecurityTLSFilesHalfWritten has the TLS files, written in place by a
// tool that truncates and then writes them (not a Kubernetes Secret), read
// while they are incomplete, when the component reconnects: it keeps
// trying, the log names the file and what is wrong with it, and once the
// files are whole it reconnects.
func TestSecurityTLSFilesHalfWritten(t *testing.T) {
	dir := t.TempDir()
	a, b := secNewPKI(t, dir, "half-a"), secNewPKI(t, dir, "half-b")
	srv := newSecRestartable(t)
	ns := srv.restart(a.serverTLS(t))
	files := t.TempDir()
	ca, cert, key := filepath.Join(files, "ca.crt"), filepath.Join(files, "tls.crt"), filepath.Join(files, "tls.key")
	put := func(path string, content []byte) { require.NoError(t, os.WriteFile(path, content, 0o600)) }
	put(ca, secReadFile(t, a.CA))
	put(cert, secReadFile(t, a.ClientCert))
	put(key, secReadFile(t, a.ClientKey))
	ps, err := secInit(t, secProps(ns.ClientURL(), "tls_ca_file", ca, "tls_client_cert", cert, "tls_client_key", key, "consumerID", "half"))
	require.NoError(t, err)
	const topic = "sec.half"
	got := secDeliveries(t, ps, topic, nil)
	publish := secPublisher(t, ps, topic)
	secAwaitData(t, got, publish("before"))
	down := func(err error) bool { return err != nil }

	// Each step leaves one file incomplete while NATS (trusting only b)
	// comes back; the log must name that file and the problem.
	steps := []struct {
		what, field, path, problem string
		write                      func()
	}{
		{"an empty client certificate", "tls_client_cert", cert, "holds no PEM certificate", func() {
			put(ca, append(secReadFile(t, a.CA), secReadFile(t, b.CA)...))
			put(cert, nil)
		}},
		{"half a client certificate", "tls_client_cert", cert, "holds no PEM certificate", func() {
			whole := secReadFile(t, b.ClientCert)
			put(cert, whole[:len(whole)/2])
		}},
		{"the new certificate with the old key", "tls_client_key", key, "is not a usable private key for tls_client_cert", func() {
			put(cert, secReadFile(t, b.ClientCert))
		}},
		{"half a CA bundle", "tls_ca_file", ca, "holds no PEM certificate", func() {
			put(key, secReadFile(t, b.ClientKey))
			whole := secReadFile(t, b.CA)
			put(ca, whole[:len(whole)/2])
		}},
	}
	for i, s := range steps {
		if i == 0 {
			natstest.Stop(ns)
			_, _ = secPingWithin(t, ps, secWait, down, "noticing NATS stopped")
			s.write()
			ns = srv.restart(b.serverTLS(t))
		} else {
			s.write()
		}
		want := fmt.Sprintf("metadata field %q = %q: %s", s.field, s.path, s.problem)
		start := time.Now()
		logged := assert.Eventually(t, func() bool { return secLogLine(s.field, s.path, s.problem) }, secWait, secTick,
			"with %s, no log line names %s, %s and says %q", s.what, s.field, s.path, s.problem)
		ctx, cancel := context.WithTimeout(t.Context(), time.Second)
		pingErr := ps.Ping(ctx)
		cancel()
		require.Error(t, pingErr, "connected with %s", s.what)
		t.Logf("with %s, Ping: %v", s.what, pingErr)
		require.True(t, logged)
		t.Logf("with %s, logged within %s", s.what, time.Since(start).Round(time.Millisecond))
		assert.Contains(t, pingErr.Error(), want, "the Ping error with %s names the file and the problem", s.what)
	}
	put(ca, secReadFile(t, b.CA))
	took, _ := secPingWithin(t, ps, secWait, func(err error) bool { return err == nil }, "reconnecting once the files are whole")
	t.Logf("reconnected %s after the files were whole", took)
	secAwaitData(t, got, publish("after"))
}

// secLogLine reports whether a line of the logs so far contains each of
// parts, as the logger writes them (quotes escaped).
func secLogLine(parts ...string) bool {
	sinkMu.Lock()
	defer sinkMu.Unlock()
	for line := range strings.Lines(sink.String()) {
		all := true
		for _, p := range parts {
			all = all && (strings.Contains(line, p) || strings.Contains(line, strings.ReplaceAll(p, `"`, `\"`)))
		}
		if all {
			return true
		}
	}
	return false
}

// TestSecurityCredsFileHalfWritten has the creds file, written in place,
// read while incomplete when the component reconnects: it keeps trying, the
// log names the file and what is wrong with it rather than NATS refusing the
// user, and once the file is whole it reconnects.
func TestSecurityCredsFileHalfWritten(t *testing.T) {
	op := secStartOperator(t)
	_, creds := op.user(t, nil)
	file := filepath.Join(t.TempDir(), "nats.creds")
	require.NoError(t, os.WriteFile(file, creds, 0o600))
	ps, err := secInit(t, secProps(op.ns.ClientURL(), "credsFile", file, "consumerID", "halfcreds", "name", "halfcreds"))
	require.NoError(t, err)
	got := secDeliveries(t, ps, "sec.halfcreds", nil)
	publish := func(data string) string {
		t.Helper()
		ctx, cancel := context.WithTimeout(t.Context(), secWait)
		defer cancel()
		require.NoError(t, ps.Publish(ctx, &pubsub.PublishRequest{PubsubName: "pubsub", Topic: "sec.halfcreds", Data: []byte(data)}))
		return data
	}
	secAwaitData(t, got, publish("before"))
	kick := func() {
		t.Helper()
		conns, err := op.ns.Connz(&server.ConnzOptions{})
		require.NoError(t, err)
		for _, c := range conns.Conns {
			if c.Name == "halfcreds" {
				require.NoError(t, op.ns.DisconnectClientByID(c.Cid))
			}
		}
	}
	for _, s := range []struct{ what, problem string }{
		{"an empty creds file", "holds no user JWT"},
		{"half a creds file", "holds no user seed"},
	} {
		if s.what == "an empty creds file" {
			require.NoError(t, os.WriteFile(file, nil, 0o600))
		} else {
			require.NoError(t, os.WriteFile(file, creds[:len(creds)*2/3], 0o600))
		}
		kick()
		start := time.Now()
		require.Eventually(t, func() bool { return secLogLine(`"credsFile"`, file, s.problem) }, secWait, secTick,
			"with %s, no log line names credsFile, %s and says %q", s.what, file, s.problem)
		t.Logf("with %s, logged within %s", s.what, time.Since(start).Round(time.Millisecond))
	}
	require.NoError(t, os.WriteFile(file, creds, 0o600))
	took, _ := secPingWithin(t, ps, secWait, func(err error) bool { return err == nil }, "reconnecting once the creds file is whole")
	t.Logf("reconnected %s after the creds file was whole", took)
	secAwaitData(t, got, publish("after"))
}
