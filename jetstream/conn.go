package jetstream

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/dapr/kit/logger"
	"github.com/nats-io/nats.go"
	natsjs "github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nkeys"

	"github.com/dapr-nats/jetstream-pubsub/metadata"
)

// connectOptions turns the connection settings into nats.go options. Files
// named in the metadata are checked here, so that a missing or unreadable file
// is an Init error naming the field rather than an endless reconnect loop.
// They are read again at each connection attempt (see connFiles), whose
// problems are logged to l.
func connectOptions(c metadata.Connection, l logger.Logger) ([]nats.Option, error) {
	files := &connFiles{c: c, log: l, problems: map[string]string{}}
	opts := []nats.Option{
		nats.Name(c.Name),
		nats.RetryOnFailedConnect(true),
		nats.MaxReconnects(-1),
		// Keep reconnecting even if the server rejects the credentials
		// twice in a row (say, while they are being rotated).
		nats.IgnoreAuthErrorAbort(),
		nats.ReconnectWait(c.ReconnectWait),
		nats.ReconnectJitter(c.ReconnectWait/10, c.ReconnectWait/5),
		nats.Timeout(c.ConnectTimeout),
		nats.PingInterval(pingInterval(c.ReconnectWait)),
		nats.MaxPingsOutstanding(2),
	}
	auth, authErr := authOptions(c, files)
	tlsOpts, tlsErr := tlsOptions(c, files)
	if err := errors.Join(authErr, tlsErr); err != nil {
		return nil, err
	}
	opts = append(append(opts, auth...), tlsOpts...)
	// Apply the options once now: nats.go calls the callbacks that load the
	// files inside the option, so a file that changed since it was checked
	// is reported here.
	probe := nats.GetDefaultOptions()
	for _, o := range opts {
		if err := o(&probe); err != nil {
			return nil, fmt.Errorf("%w: TLS or credentials: %v", metadata.ErrInvalid, err)
		}
	}
	return opts, nil
}

// authOptions gives NATS the one user identity the settings hold, if any.
func authOptions(c metadata.Connection, files *connFiles) ([]nats.Option, error) {
	switch {
	case c.Token != "":
		return []nats.Option{nats.Token(c.Token)}, nil
	case c.User != "":
		return []nats.Option{nats.UserInfo(c.User, c.Password)}, nil
	case c.JWT != "":
		return []nats.Option{nats.UserJWTAndSeed(strings.TrimSpace(c.JWT), strings.TrimSpace(c.SeedKey))}, nil
	case c.NKeySeed != "":
		return nkeyOptions(c.NKeySeed)
	case c.CredsFile != "":
		if err := readable("credsFile", c.CredsFile); err != nil {
			return nil, err
		}
		if _, err := loadCreds(c.CredsFile); err != nil {
			return nil, err
		}
		return []nats.Option{nats.UserJWT(files.userJWT, files.sign)}, nil
	}
	return nil, nil
}

// nkeyOptions signs in with an NKey user seed. The errors never quote the
// seed.
func nkeyOptions(seed string) ([]nats.Option, error) {
	kp, err := nkeys.FromSeed([]byte(strings.TrimSpace(seed)))
	if err != nil {
		return nil, &metadata.FieldError{Field: "nkeySeed", Problem: "is not a valid NKey seed", Accepted: "a user seed, which starts with SU"}
	}
	pub, err := kp.PublicKey()
	if err != nil {
		return nil, &metadata.FieldError{Field: "nkeySeed", Problem: "has no public key", Accepted: "a user seed, which starts with SU"}
	}
	return []nats.Option{nats.Nkey(pub, kp.Sign)}, nil
}

// tlsOptions adds the client certificate and the trusted CAs, once their
// files are readable and hold what they should.
func tlsOptions(c metadata.Connection, files *connFiles) ([]nats.Option, error) {
	var errs []error
	var certCB nats.TLSCertHandler
	var casCB nats.RootCAsHandler
	if c.TLSClientCert != "" {
		err := readable("tls_client_cert", c.TLSClientCert)
		if err == nil {
			err = readable("tls_client_key", c.TLSClientKey)
		}
		if err == nil {
			_, err = loadKeyPair(c.TLSClientCert, c.TLSClientKey)
		}
		if err != nil {
			errs = append(errs, err)
		} else {
			certCB = files.clientCert
		}
	}
	if c.TLSCAFile != "" {
		err := readable("tls_ca_file", c.TLSCAFile)
		if err == nil {
			_, err = loadCAs(c.TLSCAFile)
		}
		if err != nil {
			errs = append(errs, err)
		} else {
			casCB = files.rootCAs
		}
	}
	if err := errors.Join(errs...); err != nil || (certCB == nil && casCB == nil) {
		return nil, err
	}
	return []nats.Option{nats.ClientTLSConfig(certCB, casCB)}, nil
}

// connFiles reads the files the settings name at each connection attempt,
// as nats.go is given them through callbacks: the client certificate and
// key, the CA bundle and the creds file. Renewed on disk (by cert-manager,
// a Vault agent, nsc), they take effect at the next reconnect, with no new
// Init. A file that does not hold what it should at that moment (written in
// place and read half-written, a certificate renewed before its key) fails
// that attempt, which is retried every reconnectWait; nats.go reports the
// error of a TLS callback to no handler, so the problem is logged here,
// naming the field, the path and what is wrong, once until that file reads
// well again.
type connFiles struct {
	c   metadata.Connection
	log logger.Logger

	mu       sync.Mutex
	problems map[string]string // by field, the problem last logged
}

func (f *connFiles) clientCert() (tls.Certificate, error) {
	cert, err := loadKeyPair(f.c.TLSClientCert, f.c.TLSClientKey)
	return cert, f.note("tls_client_cert", err)
}

func (f *connFiles) rootCAs() (*x509.CertPool, error) {
	pool, err := loadCAs(f.c.TLSCAFile)
	return pool, f.note("tls_ca_file", err)
}

// userJWT and sign are nats.go's callbacks for the creds file. A file that
// holds no JWT would otherwise be sent as the JWT, or an empty one sent as
// none, and NATS would refuse the user as if it were revoked.
func (f *connFiles) userJWT() (string, error) {
	jwt, err := loadCreds(f.c.CredsFile)
	return jwt, f.note("credsFile", err)
}

func (f *connFiles) sign(nonce []byte) ([]byte, error) {
	b, err := os.ReadFile(f.c.CredsFile)
	if err != nil {
		return nil, f.note("credsFile", credsError(f.c.CredsFile, "cannot be read: "+errWithoutPath(err, f.c.CredsFile)))
	}
	defer clear(b)
	kp, err := nkeys.ParseDecoratedUserNKey(b)
	if err != nil {
		return nil, f.note("credsFile", credsError(f.c.CredsFile, "holds no user seed: "+err.Error()))
	}
	defer kp.Wipe()
	return kp.Sign(nonce)
}

// note logs a file's problem the first time it is seen, and forgets it once
// the file reads well. It returns err.
func (f *connFiles) note(field string, err error) error {
	problem := ""
	if err != nil {
		problem = err.Error()
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	last := f.problems[field]
	if problem == last {
		return err
	}
	f.problems[field] = problem
	switch {
	case problem != "":
		f.log.Warnf("connecting to NATS: %s; retrying every %s, the file is read again at each attempt", problem, f.c.ReconnectWait)
	case last != "":
		if field == "tls_client_cert" {
			field = "tls_client_cert and tls_client_key"
		}
		f.log.Infof("connecting to NATS: %s read well again", field)
	}
	return err
}

// readable reports, naming the field, a file that cannot be opened.
func readable(field, path string) error {
	f, err := os.Open(path)
	if err != nil {
		return &metadata.FieldError{Field: field, Value: path, Problem: "cannot be read: " + errWithoutPath(err, path), Accepted: "the path of a readable file"}
	}
	_ = f.Close()
	return nil
}

// connEvents are the nats.go handlers that follow the connection: they keep
// conns and the stats up to date, log what changed, and pass on why the
// first connection attempt failed.
func (p *PubSub) connEvents(conns *connWatch, firstErr chan<- error) []nats.Option {
	return []nats.Option{
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			// Counted without an error too: nats.go reports none for a
			// reconnect forced on it.
			p.answers.lost()
			// Without an error, the connection was closed on purpose.
			if err == nil {
				conns.closedOnPurpose()
				return
			}
			p.stats.disconnected(disconnectKind(err))
			if refusal := conns.lost(err); refusal != nil {
				p.log.Warnf("disconnected from NATS at %s: NATS ended the connection with: %v; reconnecting every %s. To fix: %s", conns.url, refusal, conns.retry, conns.creds.hint(refusal))
				return
			}
			p.log.Warnf("disconnected from NATS at %s: %v; reconnecting every %s", conns.url, err, conns.retry)
		}),
		nats.ConnectHandler(func(nc *nats.Conn) {
			// Said once when it came after failures, which were warned about.
			if down, n := conns.up(); n > 0 {
				p.log.Infof("connected to NATS at %s after %s (%s failed)", metadata.RedactURL(nc.ConnectedUrl()), roughly(down), attempts(n))
			}
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) {
			// nats.go counts the first connection too when it was made by
			// its reconnect loop (NATS was not reachable at Init); it calls
			// ConnectHandler for that one, and this only for the others.
			p.stats.reconnects.Add(1)
			down, n := conns.up()
			p.log.Infof("reconnected to NATS at %s after %s down (%s failed)", metadata.RedactURL(nc.ConnectedUrl()), roughly(down), attempts(n))
			p.replies.reconnected()
			p.reconnected()
		}),
		nats.ErrorHandler(func(nc *nats.Conn, _ *nats.Subscription, err error) {
			// nats.go names the subject of a refused subscription only in
			// the error's text.
			if errors.Is(err, nats.ErrPermissionViolation) && strings.Contains(err.Error(), abandonedPrefix) {
				p.noAdvisories.Do(func() {
					p.log.Infof("NATS does not allow this connection to subscribe to %s>, so a message that JetStream stops delivering after maxDeliver, with no last failure seen here, is neither dead-lettered nor logged; allow that subject to have them", abandonedPrefix)
				})
				return
			}
			if p.noteReplyInbox(nc, err) {
				return
			}
			// A creds file that did not read well at a connection
			// attempt, which connFiles logged already.
			var fe *metadata.FieldError
			if errors.As(err, &fe) {
				return
			}
			if isAuthError(err) {
				conns.refused(err)
			}
			p.denials.note(err)
			p.log.Warnf("NATS: %v", err)
		}),
		// nats.go reports why the first connection attempt failed only here:
		// the reconnect loop it starts clears LastError, racing with Init.
		nats.ReconnectErrHandler(func(_ *nats.Conn, err error) {
			conns.failed(err)
			select {
			case firstErr <- err:
			default:
			}
		}),
	}
}

// connect connects to NATS, or leaves nats.go connecting in the background
// when NATS is not reachable yet. A first attempt that failed in a way
// retrying cannot fix (rejected credentials, TLS) is an error instead.
func (p *PubSub) connect(ctx context.Context, c metadata.Connection, conns *connWatch, opts []nats.Option, firstErr <-chan error) (*nats.Conn, error) {
	nc, err := nats.Connect(c.URL, opts...)
	if err != nil {
		return nil, fmt.Errorf("connect to NATS at %s: %w", metadata.RedactURL(c.URL), err)
	}
	if nc.IsConnected() {
		return nc, nil
	}
	cause := firstFailure(ctx, nc, firstErr)
	if err := unretriable(cause, c.URL); err != nil {
		nc.Close()
		return nil, err
	}
	// It may have connected while waiting for the cause.
	if !nc.IsConnected() {
		reason := ""
		if cause != nil {
			reason = " (" + cause.Error() + ")"
		}
		p.log.Warnf("NATS at %s is not reachable yet%s; connecting in the background every %s, and publishing fails until then. To fix: %s",
			conns.url, reason, conns.retry, conns.creds.hint(cause))
	}
	return nc, nil
}

// firstFailure waits up to a second for why the first connection attempt
// failed.
func firstFailure(ctx context.Context, nc *nats.Conn, firstErr <-chan error) error {
	cause := nc.LastError()
	select {
	case cause = <-firstErr:
	case <-time.After(time.Second):
	case <-ctx.Done():
	}
	return cause
}

// unretriable is the Init error for a failed connection attempt that
// retrying cannot fix, or nil.
func unretriable(cause error, url string) error {
	switch {
	case isAuthError(cause):
		return fmt.Errorf("NATS at %s rejected the credentials: %v; check the authentication fields", metadata.RedactURL(url), cause)
	case isTLSConfigError(cause):
		return fmt.Errorf("%w: TLS with NATS at %s failed: %v; check tls_ca_file, tls_client_cert and tls_client_key", metadata.ErrInvalid, metadata.RedactURL(url), cause)
	}
	return nil
}

// maxPendingPublishes is how many publishes may wait for their
// acknowledgements at once, on one connection.
const maxPendingPublishes = 4096

// newJetStream is the JetStream context for the domain or API prefix the
// settings name.
func newJetStream(nc *nats.Conn, c metadata.Connection, extra ...natsjs.JetStreamOpt) (natsjs.JetStream, error) {
	opts := append([]natsjs.JetStreamOpt{
		natsjs.WithPublishAsyncMaxPending(maxPendingPublishes),
		natsjs.WithPublishAsyncTimeout(30 * time.Second),
	}, extra...)
	var js natsjs.JetStream
	var err error
	switch {
	case c.Domain != "":
		js, err = natsjs.NewWithDomain(nc, c.Domain, opts...)
	case c.APIPrefix != "":
		js, err = natsjs.NewWithAPIPrefix(nc, c.APIPrefix, opts...)
	default:
		js, err = natsjs.New(nc, opts...)
	}
	if err != nil {
		return nil, fmt.Errorf("%w: JetStream context: %v", metadata.ErrInvalid, err)
	}
	return js, nil
}

// loadCreds returns the user JWT of a creds file, and reports one without a
// user JWT or a user seed; nats.go would only find out on every connection
// attempt, forever. The error never quotes the file's content.
func loadCreds(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", credsError(path, "cannot be read: "+errWithoutPath(err, path))
	}
	defer clear(b)
	jwt, _ := nkeys.ParseDecoratedJWT(b)
	if jwt == "" || jwt == string(b) || strings.Count(jwt, ".") != 2 {
		return "", credsError(path, "holds no user JWT")
	}
	kp, err := nkeys.ParseDecoratedUserNKey(b)
	if err != nil {
		return "", credsError(path, "holds no user seed: "+err.Error())
	}
	kp.Wipe()
	return jwt, nil
}

func credsError(path, problem string) error {
	return &metadata.FieldError{Field: "credsFile", Value: path, Problem: problem, Accepted: "a .creds file holding a user JWT and its seed, as written by nsc"}
}

// loadCAs returns the CAs of a PEM bundle, or an error naming the field.
func loadCAs(path string) (*x509.CertPool, error) {
	bad := func(problem string) error {
		return &metadata.FieldError{Field: "tls_ca_file", Value: path, Problem: problem, Accepted: "a PEM bundle of CA certificates"}
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, bad("cannot be read: " + errWithoutPath(err, path))
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		return nil, bad("holds no PEM certificate")
	}
	return pool, nil
}

// loadKeyPair returns the client certificate and its key, or reports, naming
// the field, a client certificate or key that does not parse or a key that
// does not belong to the certificate.
func loadKeyPair(certFile, keyFile string) (tls.Certificate, error) {
	certPEM, err := os.ReadFile(certFile)
	if err != nil {
		return tls.Certificate{}, &metadata.FieldError{Field: "tls_client_cert", Value: certFile, Problem: "cannot be read: " + errWithoutPath(err, certFile), Accepted: "the path of a readable file"}
	}
	keyPEM, err := os.ReadFile(keyFile)
	if err != nil {
		return tls.Certificate{}, &metadata.FieldError{Field: "tls_client_key", Value: keyFile, Problem: "cannot be read: " + errWithoutPath(err, keyFile), Accepted: "the path of a readable file"}
	}
	defer clear(keyPEM)
	certs := 0
	for rest := certPEM; ; {
		var block *pem.Block
		if block, rest = pem.Decode(rest); block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			continue
		}
		if _, err := x509.ParseCertificate(block.Bytes); err != nil {
			return tls.Certificate{}, &metadata.FieldError{Field: "tls_client_cert", Value: certFile, Problem: "holds a certificate that does not parse: " + err.Error(), Accepted: "a PEM client certificate"}
		}
		certs++
	}
	if certs == 0 {
		return tls.Certificate{}, &metadata.FieldError{Field: "tls_client_cert", Value: certFile, Problem: "holds no PEM certificate", Accepted: "a PEM client certificate"}
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return tls.Certificate{}, &metadata.FieldError{Field: "tls_client_key", Value: keyFile, Problem: "is not a usable private key for tls_client_cert: " + err.Error(), Accepted: "the PEM private key of the client certificate"}
	}
	return cert, nil
}

func isAuthError(err error) bool {
	if err == nil {
		return false
	}
	if errors.Is(err, nats.ErrAuthorization) || errors.Is(err, nats.ErrAuthExpired) || errors.Is(err, nats.ErrAuthRevoked) {
		return true
	}
	s := strings.ToLower(err.Error())
	return strings.Contains(s, "authorization violation") || strings.Contains(s, "authentication")
}

// isTLSConfigError reports TLS failures that retrying cannot fix: the server's
// certificate does not verify against the trusted CAs, or the server refused
// the client certificate.
func isTLSConfigError(err error) bool {
	if err == nil {
		return false
	}
	var (
		unknownCA   x509.UnknownAuthorityError
		hostname    x509.HostnameError
		invalidCert x509.CertificateInvalidError
		verify      *tls.CertificateVerificationError
	)
	if errors.As(err, &unknownCA) || errors.As(err, &hostname) || errors.As(err, &invalidCert) || errors.As(err, &verify) {
		return true
	}
	// The server's alert, such as "remote error: tls: bad certificate".
	s := err.Error()
	return strings.Contains(s, "remote error: tls: ") && strings.Contains(s, "certificate")
}

// pingInterval detects a dead server within seconds instead of nats.go's
// default of minutes; a short reconnectWait (as in tests) shortens it too.
func pingInterval(reconnectWait time.Duration) time.Duration {
	if reconnectWait < 2*time.Second {
		return max(5*reconnectWait, 500*time.Millisecond)
	}
	return 10 * time.Second
}

func errWithoutPath(err error, path string) string {
	var pe *os.PathError
	if errors.As(err, &pe) {
		return pe.Err.Error()
	}
	return strings.ReplaceAll(err.Error(), path, "")
}
