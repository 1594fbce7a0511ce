package runtime

import (
	"encoding/binary"
)

// Input fields, in the order of the input record (see ABI.md).
const (
	fieldKind = iota
	fieldAction
	fieldFlowID
	fieldFlowType
	fieldSessionKey
	fieldPackID
	fieldProviderID
	fieldEndpointID
	fieldUserID
	fieldChannelID
	fieldConversationID
	fieldSessionID
	fieldPayload
	fieldWaitData
	fieldConfig
	fieldTraceID
	numFields
)

// Input flags.
const flagResumed = 1

const inputHeader = 12 + 8*numFields

// encodeInput lays the activity out as the guest reads it: a header with a field table
// of (offset, length) pairs, then the bytes. The guest scans nothing.
func encodeInput(buf []byte, a *Activity, pack string, flow Flow, session string, w *Wait, config []byte) []byte {
	var fields [numFields][]byte
	fields[fieldKind] = []byte(a.Kind)
	fields[fieldAction] = []byte(a.Action)
	fields[fieldFlowID] = []byte(flow.ID)
	fields[fieldFlowType] = []byte(flow.Type)
	fields[fieldSessionKey] = []byte(session)
	fields[fieldPackID] = []byte(pack)
	fields[fieldProviderID] = []byte(a.ProviderID)
	fields[fieldEndpointID] = []byte(a.EndpointID)
	fields[fieldUserID] = []byte(a.UserID)
	fields[fieldChannelID] = []byte(a.ChannelID)
	fields[fieldConversationID] = []byte(a.ConversationID)
	fields[fieldSessionID] = []byte(a.SessionID)
	fields[fieldPayload] = a.Payload
	fields[fieldConfig] = config
	fields[fieldTraceID] = []byte(a.TraceID)
	var flags uint32
	if w != nil {
		fields[fieldWaitData] = w.Data
		flags |= flagResumed
	}
	size := inputHeader
	for _, f := range fields {
		size += len(f)
	}
	if cap(buf) < size {
		buf = make([]byte, 0, size)
	}
	buf = buf[:inputHeader]
	binary.LittleEndian.PutUint32(buf[0:], ABIVersion)
	binary.LittleEndian.PutUint32(buf[4:], flags)
	binary.LittleEndian.PutUint32(buf[8:], numFields)
	for i, f := range fields {
		binary.LittleEndian.PutUint32(buf[12+8*i:], uint32(len(buf)))
		binary.LittleEndian.PutUint32(buf[16+8*i:], uint32(len(f)))
		buf = append(buf, f...)
	}
	return buf
}
