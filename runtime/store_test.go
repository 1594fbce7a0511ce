package runtime_test

import (
	"testing"

	"github.com/packhost/packhost/runtime"
	"github.com/packhost/packhost/runtime/storetest"
)

// The in-memory store keeps the transaction contract; state's tests run the same suite
// on the ConfigMap-backed store.
func TestMemStoreTransactions(t *testing.T) {
	storetest.Run(t, func(*testing.T) runtime.Store { return runtime.NewMemStore() })
}
