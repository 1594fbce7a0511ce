package wasmguard_test

import (
	"testing"

	"github.com/packhost/packhost/internal/packs"
	"github.com/packhost/packhost/internal/wasmguard"
)

// BenchmarkInstrument rewrites a realistic 10 MiB Go-built pack (examples/packs/bench/large)
// and the SDK echo pack; out/in is how much the rewrite adds to the module.
func BenchmarkInstrument(b *testing.B) {
	for _, name := range []string{"echo", "bench/large"} {
		b.Run(name, func(b *testing.B) {
			mod, err := packs.Build(name)
			if err != nil {
				b.Fatal(err)
			}
			b.SetBytes(int64(len(mod)))
			var out []byte
			for range b.N {
				if out, err = wasmguard.Instrument(mod, wasmguard.Options{MaxCallDepth: 20000, MaxTableElements: 1 << 18, MaxTables: 4}); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(len(out))/float64(len(mod)), "out/in")
		})
	}
}
