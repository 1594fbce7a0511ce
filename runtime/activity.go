package runtime

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/url"
	"strings"
	"unicode/utf8"
)

// Activity kinds.
const (
	KindMessage = "message"
	KindCustom  = "custom"
	// ActionResponse is the action of a reply activity.
	ActionResponse = "response"
)

// maxHintLen bounds every routing hint of an activity.
const maxHintLen = 256

// Activity is the JSON envelope packhost serves: a kind, optional routing hints and a
// payload kept as raw JSON.
//
// TraceID is the caller's trace id, handed to the guest as it is (input field 15,
// ABI.md). When the caller sends none, the dispatcher puts the request's W3C trace id
// there (its traceparent's, or that of the trace packhost started); a caller's own
// value wins over its traceparent. It plays no part in routing or the session key.
type Activity struct {
	Kind           string          `json:"kind"`
	Action         string          `json:"action,omitempty"`
	PackID         string          `json:"pack_id,omitempty"`
	FlowID         string          `json:"flow_id,omitempty"`
	FlowType       string          `json:"flow_type,omitempty"`
	SessionID      string          `json:"session_id,omitempty"`
	ProviderID     string          `json:"provider_id,omitempty"`
	EndpointID     string          `json:"endpoint_id,omitempty"`
	UserID         string          `json:"user_id,omitempty"`
	ChannelID      string          `json:"channel_id,omitempty"`
	ConversationID string          `json:"conversation_id,omitempty"`
	TraceID        string          `json:"trace_id,omitempty"`
	Payload        json.RawMessage `json:"payload,omitempty"`

	// session is the last key SessionKey derived for this activity: the dispatcher
	// routes by it and the revision's runtime needs the same key again.
	session sessionMemo
}

type sessionMemo struct{ env, tenant, key string }

// ParseActivity decodes and checks one activity. Unknown fields are refused, hints are
// bounded, and the payload must be JSON. Errors wrap ErrInvalidActivity. The activity's
// Payload may share data's bytes: the caller must not change data while it uses the
// activity.
func ParseActivity(data []byte) (*Activity, error) {
	if !utf8.Valid(data) {
		// encoding/json would replace bad bytes in strings with U+FFFD, and pass them
		// through in a raw payload: neither may reach the session key or the guest.
		return nil, fmt.Errorf("%w: not valid UTF-8", ErrInvalidActivity)
	}
	if a, ok := parseFast(data); ok {
		if err := a.validateFields(); err != nil {
			return nil, err
		}
		return &a, nil
	}
	return parseJSON(data)
}

// parseJSON is ParseActivity with encoding/json: the reference, and the path for
// everything parseFast leaves to it.
func parseJSON(data []byte) (*Activity, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var a Activity
	if err := dec.Decode(&a); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalidActivity, err)
	}
	if dec.More() {
		return nil, fmt.Errorf("%w: trailing data after the activity", ErrInvalidActivity)
	}
	// The decoder has checked that the payload is JSON; check the rest.
	if err := a.validateFields(); err != nil {
		return nil, err
	}
	return &a, nil
}

// Validate checks an activity built in code the way ParseActivity checks a decoded one.
func (a *Activity) Validate() error {
	if err := a.validateFields(); err != nil {
		return err
	}
	if len(a.Payload) > 0 && !validJSON(a.Payload) {
		return fmt.Errorf("%w: payload is not valid JSON", ErrInvalidActivity)
	}
	return nil
}

func (a *Activity) validateFields() error {
	switch a.Kind {
	case KindMessage:
	case KindCustom:
		if a.Action == "" {
			return fmt.Errorf("%w: a custom activity needs an action", ErrInvalidActivity)
		}
	default:
		return fmt.Errorf("%w: kind %q is not message or custom", ErrInvalidActivity, a.Kind)
	}
	hints := [...]struct{ name, v string }{
		{"action", a.Action}, {"pack_id", a.PackID}, {"flow_id", a.FlowID}, {"flow_type", a.FlowType},
		{"session_id", a.SessionID}, {"provider_id", a.ProviderID}, {"endpoint_id", a.EndpointID},
		{"user_id", a.UserID}, {"channel_id", a.ChannelID}, {"conversation_id", a.ConversationID},
		{"trace_id", a.TraceID},
	}
	for _, h := range hints {
		if len(h.v) > maxHintLen {
			return fmt.Errorf("%w: %s is longer than %d bytes", ErrInvalidActivity, h.name, maxHintLen)
		}
	}
	return nil
}

// Defaults filled into a session key, as a runner host does.
const (
	defaultEndpoint = "default"
	defaultProvider = "default"
	defaultUser     = "anonymous"
)

// SessionKey derives the key that ties an activity to its conversation: env, tenant,
// endpoint, provider, channel, conversation and user, with defaults for the missing
// ones. An explicit session_id replaces the conversation part. An activity with neither
// a user, a conversation nor a session id has no session: the key is empty.
//
// Every part is escaped, so no hint can forge another's boundary. The key is remembered
// in a for the same env and tenant: an activity's hints do not change once it is parsed.
func SessionKey(env, tenant string, a *Activity) string {
	if a.UserID == "" && a.ConversationID == "" && a.SessionID == "" {
		return ""
	}
	if m := a.session; m.key != "" && m.env == env && m.tenant == tenant {
		return m.key
	}
	or := func(v, def string) string {
		if v == "" {
			return def
		}
		return v
	}
	conversation := or(a.ConversationID, or(a.ChannelID, "default"))
	if a.SessionID != "" {
		conversation = "sid:" + a.SessionID
	}
	parts := []string{
		env, tenant,
		or(a.EndpointID, defaultEndpoint), or(a.ProviderID, defaultProvider),
		or(a.ChannelID, "default"), conversation, or(a.UserID, defaultUser),
	}
	for i, p := range parts {
		parts[i] = url.PathEscape(p)
	}
	key := strings.Join(parts, "/")
	a.session = sessionMemo{env: env, tenant: tenant, key: key}
	return key
}
