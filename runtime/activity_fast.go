package runtime

import (
	"encoding/json"
)

// parseFast decodes the common activity quickly: one flat object of known keys whose
// string values need no unescaping, and an optional JSON payload. It reports ok=false
// for anything else (escapes, non-ASCII hints, null, duplicates, unknown keys, trailing
// data, bad JSON) so that ParseActivity decodes it with encoding/json, which then decides
// and words the error. When it succeeds its result equals encoding/json's
// (FuzzParseFastMatchesEncodingJSON).
func parseFast(data []byte) (a Activity, ok bool) {
	i := skipSpace(data, 0)
	if i >= len(data) || data[i] != '{' {
		return a, false
	}
	i = skipSpace(data, i+1)
	var seen uint16
	if i < len(data) && data[i] == '}' {
		i++
		return a, skipSpace(data, i) == len(data)
	}
	for {
		key, next, good := plainString(data, i)
		if !good {
			return a, false
		}
		i = skipSpace(data, next)
		if i >= len(data) || data[i] != ':' {
			return a, false
		}
		i = skipSpace(data, i+1)
		var field *string
		var bit uint16
		switch string(key) {
		case "kind":
			field, bit = &a.Kind, 1<<0
		case "action":
			field, bit = &a.Action, 1<<1
		case "pack_id":
			field, bit = &a.PackID, 1<<2
		case "flow_id":
			field, bit = &a.FlowID, 1<<3
		case "flow_type":
			field, bit = &a.FlowType, 1<<4
		case "session_id":
			field, bit = &a.SessionID, 1<<5
		case "provider_id":
			field, bit = &a.ProviderID, 1<<6
		case "endpoint_id":
			field, bit = &a.EndpointID, 1<<7
		case "user_id":
			field, bit = &a.UserID, 1<<8
		case "channel_id":
			field, bit = &a.ChannelID, 1<<9
		case "conversation_id":
			field, bit = &a.ConversationID, 1<<10
		case "trace_id":
			field, bit = &a.TraceID, 1<<12
		case "payload":
			bit = 1 << 11
		default:
			return a, false
		}
		if seen&bit != 0 {
			return a, false
		}
		seen |= bit
		if field != nil {
			v, next, good := plainString(data, i)
			if !good {
				return a, false
			}
			*field = string(v)
			i = next
		} else {
			if i >= len(data) || data[i] == 'n' {
				return a, false // null and the end of input: let encoding/json decide
			}
			end := valueEnd(data, i)
			if end < 0 {
				return a, false
			}
			// The payload shares data's bytes (ParseActivity says so to its callers).
			a.Payload = json.RawMessage(data[i:end:end])
			i = end
		}
		i = skipSpace(data, i)
		if i >= len(data) {
			return a, false
		}
		switch data[i] {
		case ',':
			i = skipSpace(data, i+1)
		case '}':
			return a, skipSpace(data, i+1) == len(data)
		default:
			return a, false
		}
	}
}

func skipSpace(data []byte, i int) int {
	for i < len(data) {
		switch data[i] {
		case ' ', '\t', '\n', '\r':
			i++
		default:
			return i
		}
	}
	return i
}

// plainString reads a JSON string at i made of printable ASCII without escapes and
// returns its contents and the index after it.
func plainString(data []byte, i int) ([]byte, int, bool) {
	if i >= len(data) || data[i] != '"' {
		return nil, 0, false
	}
	for j := i + 1; j < len(data); j++ {
		j = asciiRun(data, j)
		if j >= len(data) {
			break
		}
		switch c := data[j]; {
		case c == '"':
			return data[i+1 : j], j + 1, true
		case c == '\\' || c < 0x20 || c >= 0x7f:
			return nil, 0, false
		}
	}
	return nil, 0, false
}
