package runtime

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"

	"github.com/tetratelabs/wazero/api"
	"github.com/tetratelabs/wazero/imports/wasi_snapshot_preview1"
)

// WASI errnos fd_write answers with.
const (
	errnoSuccess = 0
	errnoBadf    = 8
	errnoFault   = 21
	errnoInval   = 28
)

// maxIovecs is the most buffers one fd_write may pass, as IOV_MAX on Linux: wazero's
// own fd_write walks any number of them in one host call, which the deadline guard
// charges as one call (1M iovecs a call ran 100 ms).
const maxIovecs = 1024

// instantiateWASI links WASI preview 1 as wazero provides it, except fd_write: a pack has
// no files, only stdout and stderr, which go to the revision's rate-limited guest log.
func (e *Engine) instantiateWASI(ctx context.Context) error {
	b := e.rt.NewHostModuleBuilder(wasi_snapshot_preview1.ModuleName)
	wasi_snapshot_preview1.NewFunctionExporter().ExportFunctions(b)
	i32 := api.ValueTypeI32
	b.NewFunctionBuilder().WithGoModuleFunction(api.GoModuleFunc(fdWrite), []api.ValueType{i32, i32, i32, i32}, []api.ValueType{i32}).
		WithParameterNames("fd", "iovs", "iovs_len", "result.nwritten").Export("fd_write")
	if _, err := b.Instantiate(ctx); err != nil {
		return fmt.Errorf("instantiate WASI: %w", err)
	}
	return nil
}

// fdWrite writes a guest's stdout (fd 1) or stderr (fd 2) to its revision's log, one
// line of at most maxLogLineBytes a call, and refuses other descriptors and more than
// maxIovecs buffers.
func fdWrite(ctx context.Context, mod api.Module, stack []uint64) {
	checkDeadline(ctx)
	fd, iovs, n, result := api.DecodeU32(stack[0]), api.DecodeU32(stack[1]), api.DecodeU32(stack[2]), api.DecodeU32(stack[3])
	errno := func(e uint32) { stack[0] = uint64(e) }
	if fd != 1 && fd != 2 {
		errno(errnoBadf)
		return
	}
	if n > maxIovecs {
		errno(errnoInval)
		return
	}
	mem := mod.Memory()
	vecs, ok := mem.Read(iovs, n*8)
	if !ok {
		errno(errnoFault)
		return
	}
	var line []byte
	var written uint32
	for i := range n {
		ptr, size := binary.LittleEndian.Uint32(vecs[8*i:]), binary.LittleEndian.Uint32(vecs[8*i+4:])
		buf, ok := mem.Read(ptr, size)
		if !ok {
			errno(errnoFault)
			return
		}
		if room := maxLogLineBytes - len(line); room > 0 {
			line = append(line, buf[:min(len(buf), room)]...)
		}
		written += size
	}
	if !mem.WriteUint32Le(result, written) {
		errno(errnoFault)
		return
	}
	if c, _ := ctx.Value(callKey{}).(*call); c != nil && len(line) > 0 {
		level := 1
		if fd == 2 {
			level = 0
		}
		c.rev.guestLog(ctx, c.pack.id, level, line)
	}
	errno(errnoSuccess)
}

// randomChunk is the most random bytes one read of an instance's random source gives:
// wazero's random_get reads until the guest's whole buffer is full, and the source
// checks the deadline between reads, so a gigabyte of random_get ends at the deadline.
const randomChunk = 64 << 10

// guardedRandom is an instance's random source (crypto/rand with the WASI random
// capability, a fixed-seed generator without it, as wazero's default is).
type guardedRandom struct {
	src io.Reader
	s   *sleeper // the instance's: where the running call's context is
}

func (g *guardedRandom) Read(p []byte) (int, error) {
	if ctx := g.s.sleeping; ctx != nil {
		checkDeadline(ctx) // panics: the call ends with the deadline's error
	}
	return g.src.Read(p[:min(len(p), randomChunk)])
}
