//go:build wasip1

// Command webhook is a provider pack: it identifies inbound webhooks by an id header
// (X-Webhook-Id, or the header the revision's config names in ID_HEADER), handles them
// as activities (answering with the activity's trace id when it has one), and runs the
// provider ops "send", "sign" (with the signing-key secret) and "env" (what WASI
// environment it sees).
//
// Its manifest's identify hint names X-Webhook-Id; a revision configured with another
// ID_HEADER reads that one instead, which only the pack knows, so it tells the host
// through describe-identify and the host's scoped identify passes it that header.
package main

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"os"
	"strings"

	"github.com/packhost/packhost/sdk/go/packhost"
)

// idHeader is the header that carries the webhook's id.
func idHeader() string {
	if h := os.Getenv("ID_HEADER"); h != "" {
		return h
	}
	return "X-Webhook-Id"
}

func init() {
	packhost.HandleDescribeIdentify(func() []packhost.Hint {
		return []packhost.Hint{{ProviderType: "webhook", Headers: []string{idHeader()}, JSONPointers: []string{"/account"}}}
	})
	packhost.HandleIdentify(func(req *packhost.IdentifyRequest) (*packhost.Identity, error) {
		id := req.Headers[strings.ToLower(idHeader())]
		if id == "" {
			return nil, nil
		}
		var body struct {
			Account string `json:"account"`
		}
		_ = json.Unmarshal(req.Body, &body)
		if body.Account == "" {
			// Not in the identify hint: the host's scoped identify never passes this
			// header, so only unscoped identify can use it.
			body.Account = req.Headers["x-account"]
		}
		return &packhost.Identity{ProviderType: "webhook", ProviderID: id, EndpointID: body.Account}, nil
	})
	packhost.HandleInvoke(func(req *packhost.InvokeRequest) ([]byte, error) {
		switch req.Op {
		case "send":
			return json.Marshal(map[string]any{"sent": true, "idempotency_key": req.IdempotencyKey, "trace_id": req.TraceID, "payload": req.Payload})
		case "sign":
			key, ok, err := packhost.Secret("signing-key")
			if err != nil {
				return nil, err
			}
			if !ok {
				return nil, errors.New("no signing-key secret")
			}
			mac := hmac.New(sha256.New, key)
			mac.Write(req.Payload)
			return json.Marshal(map[string]string{"signature": hex.EncodeToString(mac.Sum(nil))})
		case "env":
			region, hasRegion := os.LookupEnv("REGION")
			_, hasOther := os.LookupEnv("OTHER")
			return json.Marshal(map[string]any{"region": region, "has_region": hasRegion, "has_other": hasOther})
		}
		return nil, errors.New("unknown op " + req.Op)
	})
	packhost.Handle(func(a *packhost.Activity) error {
		if a.TraceID == "" {
			return packhost.Reply([]byte(`{"received":true}`))
		}
		// The trace id to pass on to what the webhook calls, so its trace continues.
		out, err := json.Marshal(map[string]any{"received": true, "trace_id": a.TraceID})
		if err != nil {
			return err
		}
		return packhost.Reply(out)
	})
}

func main() {}
