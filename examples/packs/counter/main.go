//go:build wasip1

// Command counter is a pack that keeps a counter in its revision's state and replies
// with the new value: {"count":N}. A custom activity with action "count-user" counts per
// user; "fail-after-write" writes and then fails, to show the write is not kept.
package main

import (
	"errors"
	"strconv"

	"github.com/packhost/packhost/sdk/go/packhost"
)

func init() {
	packhost.Handle(func(a *packhost.Activity) error {
		key := "count"
		if a.Action == "count-user" {
			key = "count/" + a.UserID
		}
		n := 0
		if v, ok, err := packhost.StateGet(key); err != nil {
			return err
		} else if ok {
			if n, err = strconv.Atoi(string(v)); err != nil {
				return err
			}
		}
		n++
		if err := packhost.StateSet(key, strconv.AppendInt(nil, int64(n), 10)); err != nil {
			return err
		}
		if a.Action == "fail-after-write" {
			return errors.New("failing on purpose after a state write")
		}
		return packhost.Reply(append(strconv.AppendInt([]byte(`{"count":`), int64(n), 10), '}'))
	})
}

func main() {}
