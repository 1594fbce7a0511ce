package runtime

import "testing"

// TestRunsStopAtEverySpecialByte puts every byte value at every position of a group of
// eight and beyond: the runs may skip only groups without a byte that needs attention.
func TestRunsStopAtEverySpecialByte(t *testing.T) {
	special := func(c byte) bool { return c == '"' || c == '\\' || c < 0x20 }
	nonASCII := func(c byte) bool { return special(c) || c >= 0x7f }
	for _, run := range []struct {
		name  string
		fn    func([]byte, int) int
		stops func(byte) bool
	}{{"plainRun", plainRun, special}, {"asciiRun", asciiRun, nonASCII}} {
		for n := 0; n <= 20; n++ {
			for p := 0; p < n; p++ {
				for v := 0; v < 256; v++ {
					data := make([]byte, n)
					for i := range data {
						data[i] = 'a' + byte(i%26)
					}
					data[p] = byte(v)
					got := run.fn(data, 0)
					first := n
					if run.stops(byte(v)) {
						first = p
					}
					// It stops at or before the first byte that needs attention, and
					// within the group of eight that holds it (or in the tail).
					if got > first || (first < n && got+8 <= first) || (first == n && got+8 <= n) {
						t.Fatalf("%s(%q) = %d; the first byte needing attention is at %d", run.name, data, got, first)
					}
				}
			}
		}
	}
}
