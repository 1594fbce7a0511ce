package runtime

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	goruntime "runtime"
	"time"

	"github.com/tetratelabs/wazero/api"

	"github.com/packhost/packhost/internal/wasmguard"
)

// Guard limits: what the rewrite lets a guest grow. They are the engine's, not a
// tenant's, and they name the rewritten code in the cache.
const (
	// maxTables is the most tables a pack may declare; compilers emit one.
	maxTables = 4
	// maxTableElements caps each table: 2^18 function references (2 MiB of host memory
	// a table). The SDK echo pack's table has 6,227; wazero alone would allow 2^27.
	maxTableElements = 1 << 18
	// maxCallDepth caps the guest's own call depth; wazero alone lets the stack reach
	// about 100 MB, which a pooled instance then keeps. Go-built packs nest a few hundred
	// calls deep, recursive descent parsers a few thousand.
	maxCallDepth = 20000
)

var guardOptions = wasmguard.Options{MaxTables: maxTables, MaxTableElements: maxTableElements, MaxCallDepth: maxCallDepth}

var (
	// errDeadline ends a guest call that ran past its deadline, from the guard's tick.
	errDeadline = fmt.Errorf("%w: stopped at its deadline", ErrTimeout)
	// errStackExhausted ends a guest call nested deeper than maxCallDepth.
	errStackExhausted = fmt.Errorf("%w: call stack deeper than %d calls", ErrResourceLimit, maxCallDepth)
)

// instantiateGuard links the host side of the rewrite: tick, called by a guest whose
// budget ran out, ends the call once its context is done (past the deadline, or
// cancelled) and otherwise refills the budget; stack_exhausted ends the call.
func (e *Engine) instantiateGuard(ctx context.Context) error {
	_, err := e.rt.NewHostModuleBuilder(wasmguard.ImportModule).
		NewFunctionBuilder().WithGoModuleFunction(api.GoModuleFunc(guardTick), nil, []api.ValueType{api.ValueTypeI32}).
		Export(wasmguard.ImportTick).
		NewFunctionBuilder().WithGoModuleFunction(api.GoModuleFunc(func(context.Context, api.Module, []uint64) {
		panic(&hostStop{errStackExhausted})
	}), nil, nil).Export(wasmguard.ImportStackExhausted).
		Instantiate(ctx)
	if err != nil {
		return fmt.Errorf("instantiate guard module: %w", err)
	}
	return nil
}

// guardTick runs about every millisecond of a long guest call. Besides the deadline it
// yields the processor: Go cannot preempt a goroutine inside guest code, so without the
// yield a tenant's running guests would hold every core for scheduler slices of 10 ms
// while other tenants' activities wait.
func guardTick(ctx context.Context, _ api.Module, stack []uint64) {
	checkDeadline(ctx)
	if c, _ := ctx.Value(callKey{}).(*call); c != nil {
		// Give the tenant's processor token to its next waiting guest, if any.
		if !c.yieldCPU(ctx) {
			checkDeadline(ctx) // ctx ended while waiting: panics
		}
	} else {
		goruntime.Gosched()
	}
	stack[0] = wasmguard.Refill
}

// hostStop is what host code panics with to end a guest call. wazero turns the panic
// into the call's error, wrapped with the guest's stack trace; classify takes the
// original back out.
type hostStop struct{ err error }

func (h *hostStop) Error() string { return h.err.Error() }
func (h *hostStop) Unwrap() error { return h.err }

// checkDeadline ends the guest call (by panicking, which wazero turns into the call's
// error) when ctx is done. The clock is read too, so a deadline that passed while its
// timer waits for a scheduler busy with guests still counts.
func checkDeadline(ctx context.Context) {
	if err := ctx.Err(); err != nil {
		if errors.Is(err, context.DeadlineExceeded) {
			panic(&hostStop{errDeadline})
		}
		panic(&hostStop{fmt.Errorf("guest call: %w", err)})
	}
	if d, ok := ctx.Deadline(); ok && !time.Now().Before(d) {
		panic(&hostStop{errDeadline})
	}
}

// guardedCode returns wasm rewritten by wasmguard, from the cache directory when an
// earlier run rewrote the same digest with the same rewriter and limits.
func (e *Engine) guardedCode(wasm []byte, digest string) ([]byte, error) {
	path := ""
	if e.cacheDir != "" {
		path = filepath.Join(e.cacheDir, "guarded", guardCacheName(digest))
		if b, err := os.ReadFile(path); err == nil {
			return b, nil
		}
	}
	out, err := wasmguard.Instrument(wasm, guardOptions)
	if err != nil {
		return nil, err
	}
	if path != "" {
		if err := writeFileAtomic(path, out); err != nil {
			e.log.Error(err, "Cannot cache a guarded module; it is rewritten again at the next load", "digest", digest)
		}
	}
	return out, nil
}

// guardCacheName names a rewritten module by everything its bytes depend on: the
// original's digest, the rewriter's version and the limits.
func guardCacheName(digest string) string {
	var b []byte
	b = binary.AppendUvarint(b, wasmguard.Version)
	b = binary.AppendUvarint(b, uint64(guardOptions.MaxTables))
	b = binary.AppendUvarint(b, uint64(guardOptions.MaxTableElements))
	b = binary.AppendUvarint(b, uint64(guardOptions.MaxCallDepth))
	sum := sha256.Sum256(b)
	return fmt.Sprintf("v%d-%s-%s.wasm", wasmguard.Version, hex.EncodeToString(sum[:4]), digest)
}

// writeFileAtomic writes data to path so that a reader sees all of it or none.
func writeFileAtomic(path string, data []byte) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	f, err := os.CreateTemp(filepath.Dir(path), ".tmp-*")
	if err != nil {
		return err
	}
	_, err = f.Write(data)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(f.Name(), path)
	}
	if err != nil {
		_ = os.Remove(f.Name())
	}
	return err
}
