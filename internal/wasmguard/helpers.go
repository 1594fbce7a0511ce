package wasmguard

// The helpers that memory.fill and memory.copy become. Both take (i32, i32, i32) as the
// instructions do, check bounds first exactly as the instruction would (an out-of-bounds
// call runs the original instruction, which traps before writing anything), then move
// Chunk bytes at a time with a checkpoint before each chunk.

// Local indices in the helpers: the three parameters, then the chunk and a temporary.
const (
	hDst   = 0
	hSrc   = 1 // the fill value in the fill helper
	hLen   = 2
	hChunk = 3
	hTemp  = 4
)

func lget(b []byte, i byte) []byte { return append(b, opLocalGet, i) }

// appendOutOfBounds appends "u64(addr) + u64(len) > u64(memory.size) << 16".
func appendOutOfBounds(b []byte, addr byte) []byte {
	const i64ExtendI32U, i64Add, memorySize, i64Const, i64Shl, i64GtU = 0xad, 0x7c, 0x3f, 0x42, 0x86, 0x56
	b = append(lget(b, addr), i64ExtendI32U)
	b = append(lget(b, hLen), i64ExtendI32U, i64Add)
	return append(b, memorySize, 0x00, i64ExtendI32U, i64Const, 16, i64Shl, i64GtU)
}

// appendChunkStep appends "chunk = min(len, Chunk); budget -= chunk>>chunkShift + 1;
// check".
func (m *moduleInfo) appendChunkStep(b []byte) []byte {
	const i32LtU, selectOp, i32ShrU = 0x49, 0x1b, 0x76
	b = lget(b, hLen)
	b = appendSigned(append(b, opI32Const), Chunk)
	b = lget(b, hLen)
	b = appendSigned(append(b, opI32Const), Chunk)
	b = append(b, i32LtU, selectOp, opLocalSet, hChunk)
	b = append(b, opGlobalGet)
	b = appendU32(b, m.budgetGlobal)
	b = lget(b, hChunk)
	b = append(b, opI32Const, chunkShift, i32ShrU, opI32Sub, opI32Const, 0x01)
	return m.appendCheckTail(b, hTemp)
}

var (
	fillOp = []byte{opPrefixFC, subMemoryFill, 0x00}
	copyOp = []byte{opPrefixFC, subMemoryCopy, 0x00, 0x00}
)

func (m *moduleInfo) fillBody(b []byte) []byte {
	b = append(b, 0x01, 0x02, 0x7f) // locals: chunk, temp
	b = appendOutOfBounds(b, hDst)
	b = append(b, opIf, blockEmpty)
	b = append(lget(lget(lget(b, hDst), hSrc), hLen), fillOp...)
	b = append(b, opReturn, opEnd)
	b = append(b, opLoop, blockEmpty)
	b = m.appendChunkStep(b)
	b = append(lget(lget(lget(b, hDst), hSrc), hChunk), fillOp...)
	b = append(lget(lget(b, hDst), hChunk), opI32Add, opLocalSet, hDst)
	b = append(lget(lget(b, hLen), hChunk), opI32Sub, opLocalTee, hLen, opBrIf, 0x00)
	return append(b, opEnd, opEnd)
}

func (m *moduleInfo) copyBody(b []byte) []byte {
	const i32Or = 0x72
	b = append(b, 0x01, 0x02, 0x7f) // locals: chunk, temp
	b = appendOutOfBounds(b, hDst)
	b = appendOutOfBounds(b, hSrc)
	b = append(b, i32Or, opIf, blockEmpty)
	b = append(lget(lget(lget(b, hDst), hSrc), hLen), copyOp...)
	b = append(b, opReturn, opEnd)
	// Overlapping moves: a destination above the source copies from the end down.
	b = append(lget(lget(b, hDst), hSrc), opI32GtU, opIf, blockEmpty, opLoop, blockEmpty)
	b = m.appendChunkStep(b)
	b = append(lget(lget(b, hLen), hChunk), opI32Sub, opLocalSet, hLen)
	b = append(lget(lget(b, hDst), hLen), opI32Add)
	b = append(lget(lget(b, hSrc), hLen), opI32Add)
	b = append(lget(b, hChunk), copyOp...)
	b = append(lget(b, hLen), opBrIf, 0x00, opEnd)
	b = append(b, opElse, opLoop, blockEmpty)
	b = m.appendChunkStep(b)
	b = append(lget(lget(lget(b, hDst), hSrc), hChunk), copyOp...)
	b = append(lget(lget(b, hDst), hChunk), opI32Add, opLocalSet, hDst)
	b = append(lget(lget(b, hSrc), hChunk), opI32Add, opLocalSet, hSrc)
	b = append(lget(lget(b, hLen), hChunk), opI32Sub, opLocalTee, hLen, opBrIf, 0x00)
	return append(b, opEnd, opEnd, opEnd)
}
