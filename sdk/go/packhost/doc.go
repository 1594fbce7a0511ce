// Package packhost is the Go SDK for packhost packs: a pack author writes handlers, the
// SDK speaks the guest ABI (runtime/ABI.md).
//
// Build a pack with
//
//	GOOS=wasip1 GOARCH=wasm go build -buildmode=c-shared -o bot.wasm ./bot
//	packctl pack -manifest manifest.json -o bot.pack.wasm bot.wasm
//
// and register handlers from an init function (a reactor module runs no main):
//
//	func init() {
//		packhost.Handle(func(a *packhost.Activity) error {
//			return packhost.Reply(a.Payload)
//		})
//	}
//
// The host has already parsed the activity: routing fields arrive split out and the
// payload as raw JSON bytes, so a handler that does not need to look inside the payload
// never scans it. Everything an Activity holds points into the host's input buffer and is
// valid only until the handler returns; copy what you keep.
package packhost

// Activity is one inbound activity, as the host hands it to a handler.
type Activity struct {
	Kind           string
	Action         string
	FlowID         string
	FlowType       string
	SessionKey     string
	PackID         string
	ProviderID     string
	EndpointID     string
	UserID         string
	ChannelID      string
	ConversationID string
	SessionID      string
	// Payload is the activity's payload as raw JSON (empty when it had none).
	Payload []byte
	// Resumed is true when this activity resumes a wait the flow parked; WaitData is what
	// it parked.
	Resumed  bool
	WaitData []byte
	// Config is the revision's config as a JSON object of strings.
	Config []byte
	// TraceID is the activity's trace id: the caller's trace_id as sent, else the W3C
	// trace id of the request (empty when there is none, or from a host that predates
	// it). Pass it on to what the handler calls, so one trace follows the activity.
	TraceID string
}

// Handler handles one activity. Returning an error fails the activity: nothing it wrote
// to state is kept and the caller gets an error.
type Handler func(a *Activity) error
