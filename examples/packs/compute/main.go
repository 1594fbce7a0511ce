//go:build wasip1

// Command compute is a compute-heavy pack for measuring what the deadline guard costs
// guest code: a tight loop and recursive calls, then a reply with the results.
package main

import (
	"strconv"

	"github.com/packhost/packhost/sdk/go/packhost"
)

func fib(n int) int {
	if n < 2 {
		return n
	}
	return fib(n-1) + fib(n-2)
}

func init() {
	packhost.Handle(func(a *packhost.Activity) error {
		sum := 0
		for i := 0; i < 2_000_000; i++ {
			sum += i ^ (sum >> 3)
		}
		f := fib(22)
		return packhost.Reply([]byte(`{"sum":` + strconv.Itoa(sum) + `,"fib":` + strconv.Itoa(f) + `}`))
	})
}

func main() {}
